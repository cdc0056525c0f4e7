"""Executors: ways to compose the run's stages (:mod:`anonymize.stages`) over many images.

:mod:`~anonymize.executors.local` runs them on this machine (serially, or prepare and finish in a
pool of threads while the method runs on the main device); :mod:`~anonymize.executors.ray_cluster`
spreads them over a Ray cluster. Both hand each finished batch to the same ``record`` callback.
"""

from anonymize.executors.base import Record, StageTimes

__all__ = ["Record", "StageTimes"]
