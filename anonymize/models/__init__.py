"""Pretrained networks in plain PyTorch (the modules), their published checkpoints' converters (``legacy``)
and what each takes (``registry``)."""
