"""Finishing steps: plug-ins that run on the pasted image of every face-bearing image, before it is written.

The method changes the aligned crops; a step sees the whole image after paste-back (the adversarial
perturbation, the identity metric, the method's further renders). Each declares its metric
columns; a step that must see the dataset first surveys in the run's one first pass, then plans.
"""

from anonymize.steps.base import FinishingImage, FinishingStep

__all__ = ["FinishingImage", "FinishingStep"]
