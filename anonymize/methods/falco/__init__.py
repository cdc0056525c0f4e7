"""FALCO: fake bank, FaRL pairing, e4e inversion and batched W+ optimisation (see :mod:`.method`)."""

from anonymize.methods.falco.method import FalcoMethod

__all__ = ["FalcoMethod"]
