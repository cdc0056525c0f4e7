"""Pretrained networks FALCO needs, in plain PyTorch, and the loaders for their published checkpoints."""
