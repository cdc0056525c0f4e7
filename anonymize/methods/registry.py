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


def download_free_methods() -> list[str]:
    """The methods (with the options that make them so, e.g. ``parts -p backend=warp``) that run without
    downloading weights: every artefact in their ``weights_needed`` ships with an installed package.
    Read from the methods' own declarations, so a new method appears here without editing a message."""
    from anonymize.weights import read_lock

    lock = read_lock()
    free = []
    for name in METHODS:
        cls = method_class(name)
        if all(lock[artefact].source != "download" for artefact in cls.weights_needed):
            free.append(name)
        elif cls.no_download_with:
            free.append(f"{name} {cls.no_download_with}")
    return free


def no_download_alternative() -> str:
    """The last line of a missing-weights message: every method that needs no download."""
    free = download_free_methods()
    plain = [name for name in free if " " not in name]
    with_options = [f"--method {name}" for name in free if " " in name]
    return "no download needed: " + ", or ".join([f"--method {'|'.join(plain)}", *with_options])
