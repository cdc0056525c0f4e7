"""AnonymousNet's stage III: W+ edits toward target attributes (see :mod:`.method`)."""
