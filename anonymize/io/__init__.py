"""Image file input/output: find images in a tree, decode them robustly, write them back without metadata."""
