"""Method name -> implementing class, imported lazily so `blur` never loads the GAN stack."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from anonymize.methods.base import Method, MethodContext, MethodError

METHODS: dict[str, str] = {
    "falco": "anonymize.methods.falco.method:FalcoMethod",
    "cfa": "anonymize.methods.cfa.method:CfaMethod",
    "camouflage": "anonymize.methods.camouflage.method:CamouflageMethod",
    "parts": "anonymize.methods.parts.method:PartsMethod",
    "attributes": "anonymize.methods.attributes_edit.method:AttributeEditMethod",
    "blur": "anonymize.methods.classical:BlurMethod",
    "pixelate": "anonymize.methods.classical:PixelateMethod",
    "mask": "anonymize.methods.classical:MaskMethod",
    "ksame": "anonymize.methods.ksame.method:KSameMethod",
    "adversarial": "anonymize.methods.adversarial:AdversarialMethod",
}


def method_class(name: str) -> type[Method]:
    try:
        target = METHODS[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_method(name: str, context: MethodContext, options: Mapping[str, str] | None = None) -> Method:
    return method_class(name)(context, options)
