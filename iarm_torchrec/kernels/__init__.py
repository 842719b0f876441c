"""Compiled kernels that PyTorch has no fast path for; each falls back to plain PyTorch ops."""
