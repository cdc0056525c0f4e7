"""Stage IV of AnonymousNet: an L-inf bounded adversarial perturbation of the written image that
pushes the recogniser's descriptor of each face away from the original's (FGSM, PGD, or one
universal perturbation for the whole run), applied after paste-back and before the write."""

from anonymize.adversarial.settings import ADVERSARIAL_KINDS, AdversarialError, AdversarialSettings, split_adversarial_options

__all__ = ["ADVERSARIAL_KINDS", "AdversarialError", "AdversarialSettings", "split_adversarial_options"]
