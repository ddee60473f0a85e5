"""The fitted ensemble as one ONNX graph: uint8 RGBY images in, the ensemble's probabilities out.

`EnsembleModule` computes what the workflow computes for a test image, for every member (a model's
fold checkpoint): colour composition and normalisation (augment), each TTA view scored and the views
combined (predict), the folds' probabilities averaged (summary.assemble_model), the models' weighted
mean (ensemble.weighted_mean). The input is what a shard holds for one row: an (N, 4, S, S) uint8
RGBY image at the models' image_size. Tiles are not aggregated here: with `tiling` on, predict
aggregates the tiles of an image per view, before the views are combined, which a graph scoring
rows independently cannot do (the two orders agree when both rules are mean, or both max).
The graph is float32 throughout: it matches predict on the CPU; predict on CUDA runs under autocast
(bf16/fp16), so its probabilities differ from the graph's by that precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .augment import compose_batch, dihedral_batch, normalize_batch
from .predict import REDUCERS, load_checkpoint, load_model

OPSET = 18


def member_weights(model_weights: Sequence[float], n_folds: Sequence[int]) -> list[float]:
    """Per-member weights from per-model weights (results/ensemble.h5 `weights`): each model's folds
    are averaged with equal weight first, so a member weighs its model's (normalised) weight / n_folds."""
    if len(model_weights) != len(n_folds):
        raise ValueError(f"{len(model_weights)} model weights for {len(n_folds)} models")
    w = np.asarray(model_weights, np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(model_weights)}")
    w = w / w.sum()
    return [float(wm / k) for wm, k in zip(w, n_folds) for _ in range(k)]


class EnsembleModule(nn.Module):
    """uint8 (N, 4, S, S) RGBY -> float32 (N, 28) ensemble probabilities.

    members: (model, color_mode) per model x fold checkpoint; weights: one per member (normalised to
    sum 1 here, as ensemble.weighted_mean does; `member_weights` turns per-model weights into these).
    """

    def __init__(
        self,
        members: Sequence[tuple[nn.Module, str]],
        views: Sequence[int],
        tta_combine: str,
        weights: Sequence[float],
    ):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if len(weights) != len(members):
            raise ValueError(f"{len(weights)} weights for {len(members)} members")
        if tta_combine not in REDUCERS:
            raise ValueError(f"unknown combine {tta_combine!r} (mean or max)")
        if not views or any(v not in range(8) for v in views):
            raise ValueError(f"TTA views must be dihedral views 0-7, got {list(views)}")
        w = torch.as_tensor(np.asarray(weights, np.float64), dtype=torch.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
        self.models = nn.ModuleList([m.eval() for m, _ in members])
        self.color_modes = [c for _, c in members]
        self.views = [int(v) for v in views]
        self.tta_combine = tta_combine
        self.register_buffer("weights", (w / w.sum()).float())

    def member_probs(self, rgby: torch.Tensor) -> torch.Tensor:
        """(M, N, 28): each member's TTA-combined probabilities (predict's `probs`)."""
        out = []
        for model, mode in zip(self.models, self.color_modes):
            x = normalize_batch(compose_batch(rgby, mode))
            # All views in one batch (predict scores them one at a time; eval-mode layers are per sample).
            logits = model(torch.cat([dihedral_batch(x, v) for v in self.views]))
            p = torch.sigmoid(logits.float()).reshape(len(self.views), rgby.shape[0], -1)
            out.append(p.amax(0) if self.tta_combine == "max" else p.sum(0) / len(self.views))
        return torch.stack(out)

    def forward(self, rgby: torch.Tensor) -> torch.Tensor:
        return torch.tensordot(self.weights, self.member_probs(rgby), dims=1)

    @classmethod
    def from_checkpoints(
        cls,
        checkpoints: Sequence[Sequence[str | Path]],
        model_weights: Sequence[float],
        views: Sequence[int],
        tta_combine: str,
    ) -> EnsembleModule:
        """From the best.pt files of each model (one list per model, one file per fold), the models'
        ensemble weights (results/ensemble.h5 `weights`, in the same order) and the predict settings."""
        members, sizes = [], set()
        for files in checkpoints:
            for f in files:
                model, cfg = load_model(load_checkpoint(f), torch.device("cpu"))
                members.append((model.eval(), cfg["color_mode"]))
                sizes.add(cfg["image_size"])
        if len(sizes) > 1:
            raise ValueError(f"the members' image sizes differ ({sorted(sizes)}): one graph takes one input size")
        return cls(members, views, tta_combine, member_weights(model_weights, [len(f) for f in checkpoints]))


def export_onnx(module: nn.Module, size: int, path: str | Path, opset: int = OPSET) -> None:
    """Write `module` as ONNX: input `rgby` uint8 (batch, 4, size, size), output `probs` (batch, 28),
    batch dynamic, weights inside the one file (past ~1.5 GB of weights torch writes them to `path`.data).

    The dynamo exporter (torch.export + onnxscript, pinned) exports the whole ensemble, torch.rot90 of
    the TTA views included; the TorchScript exporter (dynamo=False) cannot (no aten::rot90 at opset 18).
    """
    x = torch.zeros(2, 4, size, size, dtype=torch.uint8)  # batch 2: torch.export specialises sizes 0 and 1
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            (x,),
            str(path),
            dynamo=True,
            dynamic_shapes={"rgby": {0: torch.export.Dim("batch", min=1)}},
            external_data=False,
            optimize=True,
            verbose=False,
            input_names=["rgby"],
            output_names=["probs"],
            opset_version=opset,
        )


def check_onnx(path: str | Path, module: nn.Module, x: torch.Tensor | np.ndarray) -> float:
    """Max abs difference between onnxruntime (CPU) on the file and `module` on the same uint8 input."""
    import onnxruntime as ort

    x = torch.as_tensor(x)
    if x.dtype != torch.uint8:
        raise ValueError(f"input must be uint8 RGBY, got {x.dtype}")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = module.eval()(x).numpy()
    if got.shape != expected.shape:
        raise ValueError(f"ONNX output shape {got.shape} differs from the module's {expected.shape}")
    return float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())
