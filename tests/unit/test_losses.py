"""Losses against known answers: Lovász hinge against the Lovász extension worked out from the Jaccard loss's
definition, soft F1 and focal by hand, weighted sums and class weights by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hpaflow.losses import CLASS_WEIGHTS, LOSSES, bce, focal, lovasz, make_loss, soft_f1

C = 28
LN2 = math.log(2)


def jaccard_loss_of(wrong: set[int], truth: np.ndarray) -> float:
    """1 - IoU of the truth and the prediction that errs on exactly the items `wrong` (0 when both are empty)."""
    pos = {i for i, y in enumerate(truth) if y}
    pred = pos ^ wrong
    union = pos | pred
    return 0.0 if not union else 1 - len(pos & pred) / len(union)


def lovasz_extension(errors: np.ndarray, truth: np.ndarray) -> float:
    """Integral over t >= 0 of the Jaccard loss of {i: errors_i > t}: piecewise constant between the errors."""
    m = np.maximum(errors, 0.0)
    cuts = np.unique(np.concatenate([[0.0], m]))
    return sum((b - a) * jaccard_loss_of({i for i in range(len(m)) if m[i] > a}, truth) for a, b in zip(cuts, cuts[1:]))


def lovasz_reference(logits: np.ndarray, target: np.ndarray) -> float:
    errors = 1 - logits * (2 * target - 1)
    return float(np.mean([lovasz_extension(errors[:, c], target[:, c]) for c in range(target.shape[1])]))


def t64(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def test_registry_names():
    assert list(LOSSES) == ["bce", "focal", "lovasz", "soft_f1"]
    assert list(CLASS_WEIGHTS) == ["inverse_sqrt"]


# --- Lovász hinge -----------------------------------------------------------------------------------------


def test_lovasz_hand_worked_tiny_case_and_its_gradient():
    # Class 0: targets (1, 0, 1), logits (0.5, 0, -1): errors (0.5, 1, 2). Sorted: 2 (pos), 1 (neg), 0.5 (pos);
    # P = {0, 2}. J({2}) = 1/2, J({2, 1}) = 2/3, J(all) = 1, so the loss is
    # (2 - 1) * 1/2 + (1 - 0.5) * 2/3 + 0.5 * 1 = 4/3 and the weights (J_k - J_k-1) are 1/2, 1/6, 1/3.
    # The other 27 classes have every margin 2 (errors -1): 0. Mean over 28: 4/3 / 28 = 1/21.
    target = torch.zeros(3, C, dtype=torch.float64)
    target[:, 1:] = 1.0
    target[:, 0] = t64([1, 0, 1])
    logits = 2 * (2 * target - 1)
    logits[:, 0] = t64([0.5, 0.0, -1.0])
    logits.requires_grad_(True)
    loss = lovasz(logits, target)
    assert loss.item() == pytest.approx(1 / 21, rel=1e-12)
    loss.backward()
    # d error / d logit = -sign: item 2 (pos) -1/2, item 1 (neg) +1/6, item 0 (pos) -1/3; all / 28.
    assert logits.grad[:, 0].numpy() == pytest.approx(np.array([-1 / 3, 1 / 6, -1 / 2]) / 28, rel=1e-12)
    assert not logits.grad[:, 1:].any()  # errors <= 0: no gradient


def test_lovasz_equals_the_extension_worked_from_the_jaccard_definition():
    rng = np.random.default_rng(0)
    for case in range(30):
        b = int(rng.integers(1, 7))
        target = (rng.random((b, C)) < 0.4).astype(np.float64)
        target[:, 0] = 0  # a class with no positives
        target[:, 1] = 1  # one with no negatives
        # Halves give many tied errors; the others are generic.
        logits = np.round(rng.normal(0, 1.5, (b, C)) * 2) / 2 if case % 2 else rng.normal(0, 1.5, (b, C))
        got = lovasz(t64(logits), t64(target)).item()
        assert got == pytest.approx(lovasz_reference(logits, target), rel=1e-10, abs=1e-12), case


def test_lovasz_ties_and_no_positives_by_hand():
    # One class, all-tied errors 1 (logits 0), targets (1, 0): J(both) = 2/2 = 1 -> loss 1 per class.
    assert lovasz(torch.zeros(2, C), torch.tensor([[1.0] * C, [0.0] * C])).item() == pytest.approx(1.0)
    # No positives: any non-empty mispredicted set has J = 1, so the loss is the largest error:
    # logits (-0.5, 0.25, -2) all negatives -> errors (0.5, 1.25, -1) -> 1.25 per class.
    logits = torch.tensor([-0.5, 0.25, -2.0])[:, None].expand(3, C)
    assert lovasz(logits, torch.zeros(3, C)).item() == pytest.approx(1.25)


def test_lovasz_is_zero_when_every_margin_is_at_least_one():
    target = torch.tensor([[1.0, 0.0] * 14, [0.0, 1.0] * 14, [1.0, 1.0] * 14])
    assert lovasz(3 * (2 * target - 1), target).item() == 0.0
    assert lovasz(2 * target - 1, target).item() == 0.0  # margins exactly 1: errors 0


def test_lovasz_gradient_equals_finite_differences_of_the_reference():
    rng = np.random.default_rng(3)
    target = (rng.random((5, C)) < 0.4).astype(np.float64)
    logits = rng.normal(0, 1.5, (5, C))
    x = t64(logits).requires_grad_(True)
    lovasz(x, t64(target)).backward()
    g = x.grad.numpy()
    assert np.isfinite(g).all()
    errors = 1 - logits * (2 * target - 1)
    assert not g[errors < 0].any()
    h = 1e-6
    for i, c in [(0, 0), (1, 5), (2, 11), (4, 27), (3, 14)]:
        up, down = logits.copy(), logits.copy()
        up[i, c] += h
        down[i, c] -= h
        numeric = (lovasz_reference(up, target) - lovasz_reference(down, target)) / (2 * h)
        assert g[i, c] == pytest.approx(numeric, abs=1e-7), (i, c)
    assert np.count_nonzero(g) > 0.5 * np.count_nonzero(errors > 0)


# --- soft F1 ------------------------------------------------------------------------------------------------


def test_soft_f1_of_a_perfect_prediction_is_close_to_zero():
    target = torch.tensor([[1.0, 0.0] * 14, [0.0, 1.0] * 14, [1.0, 1.0] * 14])
    assert soft_f1(20 * (2 * target - 1), target).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_f1_at_half_everywhere_by_hand():
    # B = 2, p = 0.5: classes 0-9 y = (1, 0): 2 * 0.5 / (1 + 1) = 1/2; classes 10-19 y = (1, 1):
    # 2 * 1 / (1 + 2) = 2/3; classes 20-27 no positives: 0. Mean F1 (5 + 20/3) / 28 = 5/12; loss 7/12.
    target = torch.zeros(2, C)
    target[0, :20] = 1
    target[1, 10:20] = 1
    logits = torch.zeros(2, C, requires_grad=True)
    loss = soft_f1(logits, target)
    assert loss.item() == pytest.approx(7 / 12, rel=1e-6)
    loss.backward()
    # A class without positives has F1 0 whatever p: no gradient, however small p is.
    assert not logits.grad[:, 20:].any() and logits.grad[:, :20].all()
    assert soft_f1(torch.full((2, C), -30.0), torch.zeros(2, C)).item() == 1.0


# --- focal and BCE ------------------------------------------------------------------------------------------


def test_focal_with_gamma_zero_is_bce():
    rng = np.random.default_rng(1)
    logits, target = t64(rng.normal(0, 2, (4, C))), t64(rng.random((4, C)) < 0.3)
    assert focal(logits, target, gamma=0).item() == pytest.approx(bce(logits, target).item(), rel=1e-12)


def test_focal_at_gamma_two_by_hand():
    # Row 0: logit 0, y = 1: p_t = 1/2, ce = ln 2 -> ln 2 / 4. Row 1: logit ln 3 (p = 3/4); classes 0-13
    # y = 1: p_t = 3/4, ce = ln(4/3) -> ln(4/3) / 16; classes 14-27 y = 0: p_t = 1/4, ce = ln 4 -> 9/16 ln 4.
    logits = torch.zeros(2, C, dtype=torch.float64)
    logits[1] = math.log(3)
    target = torch.ones(2, C, dtype=torch.float64)
    target[1, 14:] = 0
    expected = (C * LN2 / 4 + 14 * math.log(4 / 3) / 16 + 14 * 9 / 16 * math.log(4)) / (2 * C)
    assert focal(logits, target, gamma=2).item() == pytest.approx(expected, rel=1e-12)
    assert focal(logits, target).item() == pytest.approx(expected, rel=1e-12)  # default gamma 2


@pytest.mark.parametrize("name", ["bce", "focal"])
def test_class_weights_change_exactly_the_weighted_classes(name):
    # 2 samples, logits 0 (p = 1/2), y = (1, 0) in every class: every term is ln 2 for bce, ln 2 / 4 for focal
    # at gamma 2. Weights 1 but 3 on class 3 and 0 on class 5: the mean is term * (26 + 3 + 0) / 28.
    target = torch.tensor([[1.0] * C, [0.0] * C], dtype=torch.float64)
    w = [1.0] * C
    w[3], w[5] = 3.0, 0.0
    term = LN2 if name == "bce" else LN2 / 4
    plain = make_loss(name, 2.0, None, np.zeros((0, C), np.uint8))
    weighted = make_loss(name, 2.0, w, np.zeros((0, C), np.uint8))
    assert plain(torch.zeros(2, C, dtype=torch.float64), target).item() == pytest.approx(term, rel=1e-12)
    x = torch.zeros(2, C, dtype=torch.float64, requires_grad=True)
    loss = weighted(x, target)
    assert loss.item() == pytest.approx(term * 29 / 28, rel=1e-12)
    loss.backward()
    # Each class's gradient is its weight times the unweighted one, which is the same in every class.
    g = x.grad.numpy()
    assert np.allclose(g, g[:, :1] * np.array(w)[None, :], rtol=1e-12, atol=0)
    assert g[0, 0] < 0 < g[1, 0]


# --- weighted sums and make_loss ------------------------------------------------------------------------------


def test_a_weighted_sum_is_the_sum_of_its_parts_by_hand():
    # Logits 0, y = (1, 0) in every class: bce ln 2, focal (gamma 2) ln 2 / 4, lovasz 1 (J(both) = 1),
    # soft_f1 1 - 2 * 0.5 / (1 + 1) = 1/2.
    x, y = torch.zeros(2, C, dtype=torch.float64), torch.tensor([[1.0] * C, [0.0] * C], dtype=torch.float64)
    none = np.zeros((0, C), np.uint8)
    for spec, expected in [
        ("bce", LN2),
        ("focal", LN2 / 4),
        ("lovasz", 1.0),
        ("soft_f1", 0.5),
        ({"focal": 1.0, "lovasz": 0.5}, LN2 / 4 + 0.5),
        ({"bce": 1.0, "focal": 2.0, "lovasz": 0.5, "soft_f1": 3.0}, LN2 + LN2 / 2 + 0.5 + 1.5),
    ]:
        assert make_loss(spec, 2.0, None, none)(x, y).item() == pytest.approx(expected, rel=1e-7), spec
    assert make_loss("focal", 0.0, None, none)(x, y).item() == pytest.approx(LN2, rel=1e-12)  # focal_gamma used
    # Class weights (mean 2 here) scale the bce and focal terms only.
    w = [2.0] * C
    got = make_loss({"bce": 1.0, "focal": 1.0, "lovasz": 1.0, "soft_f1": 1.0}, 2.0, w, none)(x, y).item()
    assert got == pytest.approx(2 * LN2 + 2 * LN2 / 4 + 1.0 + 0.5, rel=1e-7)


def test_inverse_sqrt_by_hand():
    # 4 images: classes 0-25 in all (rate 1), class 26 in one (rate 1/4), class 27 in none. Raw weights:
    # 1 for classes 0-25, sqrt(1 / (1/4)) = 2 for class 26, class 27 absent -> the largest finite, 2.
    # Sum 26 + 4 = 30, mean 15/14 -> 14/15 and 28/15.
    labels = np.zeros((4, C), np.uint8)
    labels[:, :26] = 1
    labels[2, 26] = 1
    expected = np.array([14 / 15] * 26 + [28 / 15] * 2)
    assert np.allclose(CLASS_WEIGHTS["inverse_sqrt"](labels), expected, rtol=1e-12, atol=0)
    # Through make_loss: bce at logits 0 with y = 1: each class's gradient is -1/2 / (B * 28) times its weight.
    x = torch.zeros(1, C, requires_grad=True)
    make_loss("bce", 2.0, "inverse_sqrt", labels)(x, torch.ones(1, C)).backward()
    assert np.allclose(x.grad.numpy()[0], -0.5 / C * expected, rtol=1e-6)


def test_inverse_sqrt_rejects_labels_without_positives_or_of_the_wrong_width():
    with pytest.raises(ValueError, match="no positive in any class"):
        CLASS_WEIGHTS["inverse_sqrt"](np.zeros((5, C), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(5, 27\), expected \(N, 28\)"):
        CLASS_WEIGHTS["inverse_sqrt"](np.ones((5, 27), np.uint8))


def test_bad_names_are_named_with_the_known_ones():
    none = np.zeros((0, C), np.uint8)
    with pytest.raises(ValueError, match=r"^models\[\].loss: 'dice' is not one of bce, focal, lovasz, soft_f1$"):
        make_loss("dice", 2.0, None, none)
    with pytest.raises(ValueError, match=r"^models\[\].loss: 'dice', 'ce' are not among bce, focal, lovasz, soft_f1$"):
        make_loss({"focal": 1.0, "dice": 1.0, "ce": 2.0}, 2.0, None, none)
    with pytest.raises(ValueError, match=r"^models\[\].loss: an empty sum"):
        make_loss({}, 2.0, None, none)
    with pytest.raises(ValueError, match=r"^models\[\].class_weights: 'inverse' is not one of inverse_sqrt$"):
        make_loss("bce", 2.0, "inverse", none)
    with pytest.raises(ValueError, match=r"^models\[\].class_weights: 27 numbers given, expected 28$"):
        make_loss("bce", 2.0, [1.0] * 27, none)
