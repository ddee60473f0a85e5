"""Multi-label losses, keyed by the config's `loss` name, and their per-class weights (`class_weights`).

Every loss maps logits and 0/1 targets, both (B, 28) float, to a scalar. `make_loss` turns the config's
`loss` (a name or a weighted sum {name: weight}), `focal_gamma` and `class_weights` into one such function.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from .labels import NUM_CLASSES

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SOFT_F1_EPS = 1e-7


def bce(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy per label, each class's term times weights[c] (when given), mean over all terms."""
    return F.binary_cross_entropy_with_logits(logits, target, weight=_on(weights, logits))


def focal(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) per label: BCE scaled by (1 - p_t)^gamma, each class's term times
    weights[c] (when given), mean over all terms; gamma 0 is BCE."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    term = (1 - p_t) ** gamma * ce
    return (term if weights is None else term * _on(weights, logits)).mean()


def _on(weights: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if weights is None else weights.to(device=like.device, dtype=like.dtype)


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at errors sorted in decreasing order (along dim 0,
    each column a class), whose 0/1 truths are `gt_sorted`: entry k is J(top k+1) - J(top k), where
    J(M) = |M| / |positives ∪ M| is the Jaccard loss of mispredicting the set M (J(empty) = 0)."""
    n_pos = gt_sorted.sum(0)
    missed_pos = n_pos - gt_sorted.cumsum(0)  # positives not (yet) in the top-k set
    union = n_pos + (1 - gt_sorted).cumsum(0)  # positives plus the negatives in the top-k set: >= k >= 1
    jaccard = 1 - missed_pos / union  # = |M_k| / |positives ∪ M_k|
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovász hinge (Berman, Triki & Blaschko 2018) of each class over the batch, mean over classes.

    Per class: hinge errors 1 - logit * (2y - 1), sorted decreasing, dotted (after relu) with lovasz_grad of
    their truths. A class with no positives in the batch costs relu(its largest error) (J is 1 for any
    non-empty mispredicted set); a class whose every margin is >= 1 costs 0. Ties are harmless: tied errors
    give the same value whichever order the sort puts them in."""
    errors = 1 - logits * (2 * target - 1)
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)  # each class (column) over the batch
    # The weights depend on the targets and the order only: the gradient flows through errors_sorted.
    grads = lovasz_grad(torch.gather(target, 0, perm))
    return (F.relu(errors_sorted) * grads).sum(0).mean()


def soft_f1(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - the batch's soft macro F1: per class 2 * sum(p * y) / (sum(p) + sum(y) + eps) over the batch,
    p = sigmoid(logits), eps = SOFT_F1_EPS (1e-7, only against 0/0), mean over classes.

    A class with no positives in the batch has soft F1 0 whatever p (its numerator is exactly 0, also as
    p -> 0): it adds 1/C to the loss and no gradient, so the loss's floor is the share of such classes."""
    p = torch.sigmoid(logits)
    f1 = 2 * (p * target).sum(0) / (p.sum(0) + target.sum(0) + SOFT_F1_EPS)
    return 1 - f1.mean()


LOSSES: dict[str, Loss] = {"bce": bce, "focal": focal, "lovasz": lovasz, "soft_f1": soft_f1}
WEIGHTED = {"bce", "focal"}  # the losses that take class weights; lovasz and soft_f1 ignore them


def inverse_sqrt(labels: np.ndarray) -> np.ndarray:
    """(max class rate / class rate) ** 0.5 per class over `labels` (N, 28) 0/1, scaled to mean 1.

    A class absent from the labels (rate 0, an infinite weight) gets the largest finite weight instead."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != NUM_CLASSES:
        raise ValueError(f"class_weights inverse_sqrt: labels have shape {labels.shape}, expected (N, {NUM_CLASSES})")
    rate = labels.astype(np.float64).mean(axis=0) if len(labels) else np.zeros(NUM_CLASSES)
    present = rate > 0
    if not present.any():
        raise ValueError("class_weights inverse_sqrt: the training labels have no positive in any class")
    w = np.empty(NUM_CLASSES)
    w[present] = np.sqrt(rate.max() / rate[present])
    w[~present] = w[present].max()
    return w / w.mean()


CLASS_WEIGHTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"inverse_sqrt": inverse_sqrt}


def class_weight_vector(class_weights: str | list[float] | None, train_labels: np.ndarray) -> np.ndarray | None:
    """The config's `class_weights` as 28 numbers (None when null): as given, or by a CLASS_WEIGHTS name."""
    if class_weights is None:
        return None
    if isinstance(class_weights, str):
        if class_weights not in CLASS_WEIGHTS:
            raise ValueError(f"models[].class_weights: {class_weights!r} is not one of {', '.join(CLASS_WEIGHTS)}")
        return CLASS_WEIGHTS[class_weights](train_labels)
    w = np.asarray(class_weights, dtype=np.float64)
    if w.shape != (NUM_CLASSES,):
        raise ValueError(f"models[].class_weights: {len(w)} numbers given, expected {NUM_CLASSES}")
    return w


def make_loss(
    spec: str | dict[str, float],
    focal_gamma: float,
    class_weights: str | list[float] | None,
    train_labels: np.ndarray,
) -> Loss:
    """The training loss of a model's config: `loss` (a LOSSES name or a weighted sum {name: weight}),
    `focal_gamma` (for focal terms) and `class_weights` (null, 28 numbers or a CLASS_WEIGHTS name worked out
    from `train_labels`, (N, 28) 0/1). Class weights apply to the bce and focal terms only; lovasz and
    soft_f1 terms ignore them."""
    terms = {spec: 1.0} if isinstance(spec, str) else dict(spec)
    if not terms:
        raise ValueError(f"models[].loss: an empty sum; name at least one of {', '.join(LOSSES)}")
    unknown = [repr(name) for name in terms if name not in LOSSES]
    if unknown:
        verb = "is not one of" if len(unknown) == 1 else "are not among"
        raise ValueError(f"models[].loss: {', '.join(unknown)} {verb} {', '.join(LOSSES)}")
    w = class_weight_vector(class_weights, train_labels)
    placed: dict[tuple[torch.device, torch.dtype], list[tuple[float, Loss]]] = {}

    def parts(like: torch.Tensor) -> list[tuple[float, Loss]]:
        """The weighted terms, their class weights moved once to the logits' device and dtype."""
        key = (like.device, like.dtype)
        if key not in placed:
            weights = None if w is None else torch.as_tensor(w, dtype=like.dtype, device=like.device)
            placed[key] = []
            for name, k in terms.items():
                fn = LOSSES[name]
                if name == "focal":
                    fn = partial(fn, gamma=focal_gamma)
                if name in WEIGHTED and weights is not None:
                    fn = partial(fn, weights=weights)
                placed[key].append((float(k), fn))
        return placed[key]

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total, *rest = (k * fn(logits, target) for k, fn in parts(logits))
        for t in rest:
            total = total + t
        return total

    return loss
