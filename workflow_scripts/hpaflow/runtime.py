"""Device choice and mixed precision, shared by training and prediction."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("hpaflow")
# What CUDA_VISIBLE_DEVICES says when SLURM (or a user) gave the job no GPU.
NO_GPU_VALUES = ("", "-1", "NoDevFiles")


def pick_device(name: str) -> torch.device:
    """`auto`: CUDA when torch sees a GPU, else the CPU; `cpu` / `cuda` force one.

    A job that was given GPUs (CUDA_VISIBLE_DEVICES set, as SLURM does for --gpus) but in which torch
    finds no usable CUDA device (no driver, a CPU-only torch) says so once, then runs on the CPU.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and visible not in NO_GPU_VALUES:
            log.warning(
                "this job was given GPU(s) (CUDA_VISIBLE_DEVICES=%s) but torch %s finds no usable CUDA "
                "device: running on the CPU",
                visible,
                torch.__version__,
            )
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def use_threads(threads: int) -> int:
    """Give torch the job's threads; returns the DataLoader workers beside them (threads - 1)."""
    torch.set_num_threads(max(1, threads))
    return max(0, threads - 1)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA only: bf16 where supported (no loss scaling needed), else fp16."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
