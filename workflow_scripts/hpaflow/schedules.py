"""When the optimiser steps and at what rate, in plain python: the learning rate of each epoch
(models[].scheduler, warmup_epochs) and the loss weights of gradient accumulation (models[].accumulate).

The training loop sets each epoch's rate on the optimiser at the epoch's start (train.set_lr): the rate
is a function of the epoch alone, so a resumed job runs at exactly the rates of an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """A model's learning-rate settings (the models[] keys of the same names)."""

    lr: float
    epochs: int
    scheduler: str
    step_epochs: Sequence[int] | None = None
    step_rates: Sequence[float] | None = None
    restart_period: int = 10
    warmup_epochs: int = 0


def _cosine(s: Schedule, epoch: int, t: int, n: int) -> float:
    return s.lr * 0.5 * (1 + math.cos(math.pi * t / n))  # torch's CosineAnnealingLR(T_max=n), eta_min 0


def _step(s: Schedule, epoch: int, t: int, n: int) -> float:
    if s.step_epochs is None:  # x0.1 every third of the epochs after warm-up (torch's StepLR)
        return s.lr * 0.1 ** (t // max(1, n // 3))
    rate = s.lr
    for start, r in zip(s.step_epochs, s.step_rates):  # absolute epochs (counted from 0), not shifted by warm-up
        if epoch >= start:
            rate = r
    return rate


def _cosine_restarts(s: Schedule, epoch: int, t: int, n: int) -> float:
    p = s.restart_period
    return s.lr * 0.5 * (1 + math.cos(math.pi * (t % p) / p))


def _constant(s: Schedule, epoch: int, t: int, n: int) -> float:
    return s.lr


# models[].scheduler -> the rate after warm-up, from (settings, epoch, t = epoch - warm-up, n = epochs - warm-up).
SCHEDULERS: dict[str, Callable[[Schedule, int, int, int], float]] = {
    "cosine": _cosine,
    "step": _step,
    "cosine_restarts": _cosine_restarts,
    "constant": _constant,
}


def lr_at(s: Schedule, epoch: int) -> float:
    """The learning rate of `epoch` (0-based): linear warm-up lr x (e + 1) / (W + 1) for e < W, then the
    scheduler over the remaining epochs."""
    if s.scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler: unknown {s.scheduler!r} (one of {', '.join(SCHEDULERS)})")
    if not 0 <= epoch < s.epochs:
        raise ValueError(f"epoch {epoch} is outside the {s.epochs} epochs")
    w = s.warmup_epochs
    if epoch < w:
        return s.lr * (epoch + 1) / (w + 1)
    return SCHEDULERS[s.scheduler](s, epoch, epoch - w, s.epochs - w)


def batch_sizes(n: int, batch_size: int, drop_last: bool) -> list[int]:
    """The batches a DataLoader makes of n samples."""
    sizes = [batch_size] * (n // batch_size)
    if n % batch_size and not drop_last:
        sizes.append(n % batch_size)
    return sizes


def accumulation_plan(sizes: Sequence[int], k: int) -> list[tuple[float, bool]]:
    """Per batch of an epoch: (the weight of its mean loss, whether the optimiser steps after it).

    One step per k batches; each batch's loss is weighted by its share of its group's samples, so the
    accumulated gradient is that of the group's samples in one batch (a mean loss). The epoch's last group
    may hold fewer than k batches: it steps with its own samples' count (weights sum to 1 within it too).
    """
    plan = []
    for start in range(0, len(sizes), k):
        group = sizes[start : start + k]
        total = sum(group)
        plan += [(b / total, j == len(group) - 1) for j, b in enumerate(group)]
    return plan
