"""FALCO: nearest fake, e4e inversion and FALCO's loss on the shared W+ toolkit (:mod:`anonymize.methods.latent`)."""

from anonymize.methods.falco.method import FalcoMethod

__all__ = ["FalcoMethod"]
