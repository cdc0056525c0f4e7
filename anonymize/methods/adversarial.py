"""``--method adversarial``: the face left as it is, then only the adversarial finishing step
(:mod:`anonymize.adversarial`; PGD unless ``-p adversarial=fgsm|uap``). A face a person still
recognises and a recogniser should not: the output is meant to fool machines, not people."""

from __future__ import annotations

from collections.abc import Sequence

from anonymize.methods.base import AnonymizedFace, FaceCrop, Method


class AdversarialMethod(Method):
    name = "adversarial"
    summary = "Leaves the face as it is and adds a perturbation that fools dlib's recogniser."
    weights_needed = ("dlib_shape_predictor_5", "dlib_face_recognition_resnet")
    default_region = "crop"  # the identity crop: pasting it back changes no pixel but the resampling's
    finishing_steps = ("adversarial",)  # PGD on the final image unless -p adversarial= says otherwise

    def anonymize(self, faces: Sequence[FaceCrop]) -> list[AnonymizedFace]:
        return [AnonymizedFace(face.image.copy()) for face in faces]
