"""Zero-shot attribute targets from FaRL's text tower (CLIP's BPE tokenizer, from open_clip's wheel).

For each part, two prompts name the attribute Li et al. give it and its opposite ("a photo of a face
with a big nose" / "... with a small nose"). The target is always the named attribute: in the paper
the indicator L_t is the StarGAN target label, 1 on the attributes chosen for obfuscation (Bushy
Eyebrows, Narrow Eyes, Big Nose, Big Lips), and "obfuscating" a part means making the face carry that
attribute (the paper's "specifying a desired attribute e.g. big nose"), the direction the warp
backend moves too. A face that already has it is pushed further along it (the loss never reaches 0).
The attribute loss of an edited face is CLIP's zero-shot classification loss toward the target: the
cross-entropy of
``softmax(logit_scale * [cos(image, target), cos(image, current)])`` at the target, summed over the
edited parts. No training, no attribute classifier: FaRL's image and text towers were trained
together on LAION-Face captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anonymize.models.farl import FaRLTextEncoder, encode_prompt_pairs, tokenize  # noqa: F401 (tokenize: re-exported)

PROMPT = "a photo of a face with {}"
# part -> (the attribute the paper gives it: always the target, its opposite)
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "eyebrows": ("bushy eyebrows", "thin eyebrows"),
    "eyes": ("narrow eyes", "big eyes"),
    "nose": ("a big nose", "a small nose"),
    "lips": ("big lips", "thin lips"),
}


@dataclass(frozen=True)
class AttributeTexts:
    """The unit text embeddings of every part's two prompts, [P, 2, E], and FaRL's temperature."""

    parts: tuple[str, ...]
    embeddings: torch.Tensor
    logit_scale: float

    @classmethod
    def build(cls, text_encoder: FaRLTextEncoder, parts: Sequence[str] = tuple(ATTRIBUTES)) -> AttributeTexts:
        pairs = [(PROMPT.format(ATTRIBUTES[part][0]), PROMPT.format(ATTRIBUTES[part][1])) for part in parts]
        return cls(tuple(parts), *encode_prompt_pairs(text_encoder, pairs))

    def targets(self, parts: Sequence[str]) -> torch.Tensor:
        """[len(parts), 2, E]: per part (the named attribute's prompt: the target, its opposite's)."""
        return torch.stack([self.embeddings[self.parts.index(part)] for part in parts])

    def loss(self, image_embeddings: torch.Tensor, targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per face [B]: zero-shot cross-entropy toward each face's targets ([k_i, 2, E]), summed over its parts."""
        losses = []
        for embedding, pairs in zip(image_embeddings, targets):
            logits = self.logit_scale * (pairs @ embedding)  # [k, 2]: target first
            zeros = torch.zeros(len(pairs), dtype=torch.long, device=logits.device)
            losses.append(F.cross_entropy(logits, zeros, reduction="sum"))
        return torch.stack(losses)
