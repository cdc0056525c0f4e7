"""CFA on ArcFace's identity sphere: a new identity at a chosen angle (see :mod:`.method`)."""
