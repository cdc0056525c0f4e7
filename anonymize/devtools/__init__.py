"""Checks of the code base itself (run by the test suite; ``python -m anonymize.devtools.layers``)."""
