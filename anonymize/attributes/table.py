"""The attribute table every source returns, every metric reads and the audit stores.

One row per face (its key ``"<relative path>#<face index>"``), one column per attribute, values
are probabilities in [0, 1] (a hard label is 0 or 1; NaN where the source says nothing), and
the source that produced them is kept with them, so a release never mixes estimates silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# CelebA's 40 binary attributes, in list_attr_celeba.txt's order (the order of every table here).
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)


@dataclass(frozen=True)
class AttributeTable:
    keys: tuple[str, ...]  # face keys, one per row
    names: tuple[str, ...]  # attribute names, one per column
    probabilities: np.ndarray  # [faces, attributes] float32 in [0, 1]; NaN: unknown
    source: str  # the source's registry name ("zero-shot", "labels", "probe", "landmarks")
    heuristic: bool = False  # True for rule-of-thumb sources (landmarks): never a ground truth

    def __post_init__(self) -> None:
        values = np.asarray(self.probabilities, dtype=np.float32)
        if values.shape != (len(self.keys), len(self.names)):
            raise ValueError(f"attribute table: {values.shape} values for {len(self.keys)} faces x {len(self.names)} attributes")
        known = values[~np.isnan(values)]
        if known.size and (known.min() < 0 or known.max() > 1):
            raise ValueError("attribute table: probabilities must lie in [0, 1]")
        object.__setattr__(self, "probabilities", values)

    def bits(self, threshold: float = 0.5) -> np.ndarray:
        """[faces, attributes] int8: 1 present, 0 absent, -1 unknown."""
        values = self.probabilities
        out = (values >= threshold).astype(np.int8)
        out[np.isnan(values)] = -1
        return out

    def select(self, names: tuple[str, ...] | list[str]) -> AttributeTable:
        """The same faces, only the named attributes (in the order given); unknown names are an error."""
        missing = [name for name in names if name not in self.names]
        if missing:
            raise KeyError(f"attributes not in this table (source {self.source}): {', '.join(missing)}")
        columns = [self.names.index(name) for name in names]
        return AttributeTable(self.keys, tuple(names), self.probabilities[:, columns], self.source, self.heuristic)
