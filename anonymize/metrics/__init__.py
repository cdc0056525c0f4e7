"""Measurements of faces: identity (dlib's recogniser) and image quality."""
