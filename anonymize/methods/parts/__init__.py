"""Adaptive facial-attribute obfuscation (Li et al., ACM MM 2021): see :mod:`.method`."""
