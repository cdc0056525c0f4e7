"""Identity-preserving face camouflage: the face looks like someone else to people, not to recognisers."""
