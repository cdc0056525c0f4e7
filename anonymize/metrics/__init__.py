"""Measurements of faces: identity (dlib's recognizer) and image quality."""
