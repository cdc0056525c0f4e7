"""The ``zero-shot`` attribute source: CelebA's 40 attributes read off FaRL's image-text space.

FaRL's image and text towers were trained together (CLIP-style, on LAION-Face captions), so an
attribute can be scored without a classifier: one prompt says the face has it, one says it has not,
and the probability that it has it is the softmax over the pair of FaRL's scaled cosines,

    p = softmax(s * [cos(f, t_with), cos(f, t_without)])[0] = sigmoid(s * (cos(f, t_with) - cos(f, t_without)))

with ``f`` the face's unit CLS embedding, ``t`` the unit text embeddings and ``s = exp(logit_scale)``
FaRL's learnt temperature. The same scores, kept differentiable, drive the attribute edits of stage III
(:mod:`anonymize.methods.attributes_edit`). They are estimates (no ground truth), but not heuristic.

The prompt pairs are the table :data:`PROMPTS` below, one pair per attribute in CelebA's order,
mostly "a photo of a face with eyeglasses" / "a photo of a face without eyeglasses". Attributes
that are not a thing a face has or lacks (sex, age, blur) get a pair of opposites ("a photo of a
man's face" / "a photo of a woman's face").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from anonymize.attributes.table import CELEBA_ATTRIBUTES, AttributeTable
from anonymize.faces.types import FaceCrop
from anonymize.models.farl import FaRLTextEncoder, encode_prompt_pairs
from anonymize.models.images import CanonicalImages
from anonymize.weights import WeightsStore

_WITH = "a photo of a face with {}"
_WITHOUT = "a photo of a face without {}"


def _has(thing: str) -> tuple[str, str]:
    return _WITH.format(thing), _WITHOUT.format(thing)


# attribute -> (prompt: the face has it, prompt: the face has not), in CELEBA_ATTRIBUTES' order
PROMPTS: dict[str, tuple[str, str]] = {
    "5_o_Clock_Shadow": _has("a five o'clock shadow"),
    "Arched_Eyebrows": _has("arched eyebrows"),
    "Attractive": ("a photo of an attractive face", "a photo of an unattractive face"),
    "Bags_Under_Eyes": _has("bags under the eyes"),
    "Bald": ("a photo of a bald head", "a photo of a face with a full head of hair"),
    "Bangs": _has("bangs"),
    "Big_Lips": ("a photo of a face with big lips", "a photo of a face with thin lips"),
    "Big_Nose": ("a photo of a face with a big nose", "a photo of a face with a small nose"),
    "Black_Hair": _has("black hair"),
    "Blond_Hair": _has("blond hair"),
    "Blurry": ("a blurry photo of a face", "a sharp photo of a face"),
    "Brown_Hair": _has("brown hair"),
    "Bushy_Eyebrows": ("a photo of a face with bushy eyebrows", "a photo of a face with thin eyebrows"),
    "Chubby": ("a photo of a chubby face", "a photo of a slim face"),
    "Double_Chin": _has("a double chin"),
    "Eyeglasses": _has("eyeglasses"),
    "Goatee": _has("a goatee"),
    "Gray_Hair": _has("gray hair"),
    "Heavy_Makeup": ("a photo of a face with heavy makeup", "a photo of a face without makeup"),
    "High_Cheekbones": ("a photo of a face with high cheekbones", "a photo of a face with low cheekbones"),
    "Male": ("a photo of a man's face", "a photo of a woman's face"),
    "Mouth_Slightly_Open": ("a photo of a face with the mouth slightly open", "a photo of a face with the mouth closed"),
    "Mustache": _has("a mustache"),
    "Narrow_Eyes": ("a photo of a face with narrow eyes", "a photo of a face with wide open eyes"),
    "No_Beard": ("a photo of a face without a beard", "a photo of a face with a beard"),
    "Oval_Face": ("a photo of an oval face", "a photo of a round face"),
    "Pale_Skin": ("a photo of a face with pale skin", "a photo of a face with tanned skin"),
    "Pointy_Nose": ("a photo of a face with a pointy nose", "a photo of a face with a round nose"),
    "Receding_Hairline": _has("a receding hairline"),
    "Rosy_Cheeks": _has("rosy cheeks"),
    "Sideburns": _has("sideburns"),
    "Smiling": ("a photo of a smiling face", "a photo of a face that is not smiling"),
    "Straight_Hair": _has("straight hair"),
    "Wavy_Hair": _has("wavy hair"),
    "Wearing_Earrings": _has("earrings"),
    "Wearing_Hat": _has("a hat"),
    "Wearing_Lipstick": _has("lipstick"),
    "Wearing_Necklace": _has("a necklace"),
    "Wearing_Necktie": _has("a necktie"),
    "Young": ("a photo of a young person's face", "a photo of an old person's face"),
}
assert tuple(PROMPTS) == CELEBA_ATTRIBUTES


def parse_attribute_names(text: str, what: str) -> tuple[str, ...]:
    """Comma-separated CelebA attribute names (empty: all 40); an unknown name is a one-line error."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in PROMPTS]
    if unknown:
        raise ValueError(f"{what}: unknown attribute(s) {', '.join(unknown)}; CelebA's are {', '.join(CELEBA_ATTRIBUTES)}")
    return names or CELEBA_ATTRIBUTES


@dataclass(frozen=True)
class ZeroShotPrompts:
    """The unit text embeddings of each attribute's pair [A, 2, E] (present first) and FaRL's temperature."""

    names: tuple[str, ...]
    embeddings: torch.Tensor
    logit_scale: float

    @classmethod
    def build(cls, text_encoder: FaRLTextEncoder, names: Sequence[str] = CELEBA_ATTRIBUTES) -> ZeroShotPrompts:
        return cls(tuple(names), *encode_prompt_pairs(text_encoder, [PROMPTS[name] for name in names]))

    def logits(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """[N, A] log-odds ``s * (cos(f, t_with) - cos(f, t_without))`` of unit image embeddings [N, E]
        (differentiable; sigmoid of it is the softmax over the pair)."""
        cosines = torch.einsum("ne,ape->nap", image_embeddings.float(), self.embeddings.to(image_embeddings.device))
        return self.logit_scale * (cosines[..., 0] - cosines[..., 1])

    def probabilities(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(image_embeddings))


class ZeroShotSource:
    """FaRL zero-shot estimates of CelebA's attributes (option ``attributes``: a comma list, default all 40)."""

    name = "zero-shot"
    heuristic = False
    batch_size = 16

    def __init__(self, weights: WeightsStore, device: str = "cpu", options: Mapping[str, str] | None = None) -> None:
        from anonymize.models.registry import load_farl_model, load_farl_text_model

        options = dict(options or {})
        unknown = sorted(set(options) - {"attributes"})
        if unknown:
            raise ValueError(f"attribute source 'zero-shot' has no option {', '.join(unknown)} (its options: attributes)")
        self.device = torch.device(device)
        names = parse_attribute_names(options.get("attributes", ""), "attribute source 'zero-shot'")
        self.farl = load_farl_model(weights, self.device)
        self.prompts = ZeroShotPrompts.build(load_farl_text_model(weights, self.device), names)

    @torch.no_grad()
    def estimate(self, faces: Sequence[FaceCrop]) -> AttributeTable:
        rows = [np.zeros((0, len(self.prompts.names)), dtype=np.float32)]
        for start in range(0, len(faces), self.batch_size):
            batch = faces[start : start + self.batch_size]
            images = CanonicalImages.from_uint8(np.stack([face.image for face in batch]), self.device)
            rows.append(self.prompts.probabilities(self.farl(images).cls).cpu().numpy())
        return AttributeTable(tuple(face.key for face in faces), self.prompts.names, np.concatenate(rows), self.name)
