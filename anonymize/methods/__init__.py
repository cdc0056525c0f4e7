"""Anonymization methods: plug-ins behind :class:`anonymize.methods.base.Method`."""

from anonymize.methods.base import AnonymizedFace, FaceCrop, Method, MethodContext, MethodError
from anonymize.methods.registry import METHODS, create_method, method_class

__all__ = ["AnonymizedFace", "FaceCrop", "Method", "MethodContext", "MethodError", "METHODS", "create_method", "method_class"]
