"""Multi-label losses, keyed by the config's `loss` name."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target)


def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) per label: BCE scaled by (1 - p_t)^gamma; gamma 0 is BCE."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    return ((1 - p_t) ** gamma * ce).mean()


LOSSES = {"bce": bce, "focal": focal}
