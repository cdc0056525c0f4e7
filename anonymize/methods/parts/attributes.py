"""Zero-shot attribute targets from FaRL's text tower (CLIP's BPE tokenizer, from open_clip's wheel).

For each part, two prompts name the attribute Li et al. flip and its opposite ("a photo of a face
with a big nose" / "... with a small nose"). The face's current side is the prompt its FaRL image
embedding is closer to; the target is the other one. The attribute loss of an edited face is CLIP's
zero-shot classification loss toward the target: the cross-entropy of
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
# part -> (the attribute the paper gives it, its opposite)
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

    def targets(self, image_embedding: torch.Tensor, parts: Sequence[str]) -> torch.Tensor:
        """[len(parts), 2, E]: per part (target prompt, current prompt) for a face's unit image embedding [E]."""
        rows = []
        for part in parts:
            pair = self.embeddings[self.parts.index(part)]
            current = int((pair @ image_embedding.float()).argmax())
            rows.append(torch.stack([pair[1 - current], pair[current]]))
        return torch.stack(rows)

    def loss(self, image_embeddings: torch.Tensor, targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per face [B]: zero-shot cross-entropy toward each face's targets ([k_i, 2, E]), summed over its parts."""
        losses = []
        for embedding, pairs in zip(image_embeddings, targets):
            logits = self.logit_scale * (pairs @ embedding)  # [k, 2]: target first
            zeros = torch.zeros(len(pairs), dtype=torch.long, device=logits.device)
            losses.append(F.cross_entropy(logits, zeros, reduction="sum"))
        return torch.stack(losses)
