"""The options every W+ method shares, declared and checked once.

FALCO, CFA, camouflage and the attribute edits all open the same stack (:mod:`.stack`), draw on the
same fake bank and run the same loop (:mod:`.optimize`), so they take the same eight options for
them. Each method's ``Params`` subclasses :class:`LatentParams`, adds its own fields (and may give a
shared one another default: dataclass inheritance keeps the base's fields first, which changes
nothing recorded, as the manifest writes the parameters with sorted keys) and calls
``super().validate()`` from its own ``validate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from anonymize.methods.latent.bank import DEFAULT_PSI
from anonymize.models.registry import GENERATORS


@dataclass(frozen=True)
class LatentParams:
    """The loop's schedule (it is an :class:`~anonymize.methods.latent.optimize.Schedule`), the layers it
    moves, the fake bank's size and truncation, and which StyleGAN2 file to load."""

    steps: int = field(default=50, metadata={"help": "optimisation steps per face (Adam)"})
    lr: float = field(default=0.01, metadata={"help": "Adam learning rate"})
    lr_gamma: float = field(default=0.8, metadata={"help": "learning-rate factor at 75% and 90% of the steps"})
    trainable_layers: tuple[int, ...] = field(default=(3, 4, 5, 6, 7),
                                              metadata={"help": "W+ layers optimised (the middle resolutions), e.g. 3,4,5,6,7"})
    bank_size: int = field(default=0, metadata={"help": "0: automatic, 10000 fakes (falco with --aligned: max(10000, 2 x the run's faces), as its paper needs more fakes than faces)"})
    psi: float = field(default=DEFAULT_PSI, metadata={"help": "truncation of the fake bank's W codes"})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast for the networks (CUDA only)"})
    generator: str = field(default="genforce", metadata={"help": "\"genforce\" (FALCO's file) or \"e4e\" (the decoder inside e4e's file)"})

    def validate(self) -> None:
        """The checks of the shared options (a ValueError is one line; whether the layers exist is checked
        once the generator is loaded, by :func:`anonymize.methods.latent.stack.open_latent_stack`)."""
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        layers = self.trainable_layers
        if not layers or len(set(layers)) != len(layers) or min(layers) < 0:
            raise ValueError(f"trainable_layers must be distinct non-negative W+ layer indices, got {layers}")
        if self.bank_size < 0:
            raise ValueError(f"bank_size must be >= 0 (0 = automatic), got {self.bank_size}")
        if not 0 < self.psi <= 1:
            raise ValueError(f"psi must be in (0, 1], got {self.psi}")
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {', '.join(GENERATORS)}, got {self.generator!r}")
