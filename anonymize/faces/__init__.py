"""Finding faces, aligning them to square crops, and pasting anonymized crops back."""
