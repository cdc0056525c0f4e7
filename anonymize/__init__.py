"""anonymize: batch face-dataset anonymization with attribute-preserving methods."""

__version__ = "0.1.0"
