"""Device choice and mixed precision, shared by training and prediction."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """`auto`: CUDA when torch sees a GPU, else the CPU; `cpu` / `cuda` force one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA only: bf16 where supported (no loss scaling needed), else fp16."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

