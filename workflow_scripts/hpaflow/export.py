"""The fitted ensemble as one ONNX graph: uint8 RGBY images in, the ensemble's probabilities out.

`EnsembleModule` computes what the workflow computes for a test image, for every member (a model's
fold checkpoint): colour composition and its normalisation (augment), its crops (the same static offsets
predict takes, predict.model_crops) each scored in each TTA view and all combined (predict), the folds'
probabilities averaged (summary.assemble_model), the models' weighted
mean (ensemble.weighted_mean). The input is what predict feeds a model for one shard row: an (N, 4, M, M)
uint8 RGBY image, the shard's S px row resized to the models' image_size M (transforms.resize; none when
S == M); preprocessing.json records both steps, from the constants the code uses. Tiles are not
aggregated here: with `tiling` on, predict aggregates the tiles of an image per view, before the views
are combined, which a graph scoring rows independently cannot do (the two orders agree when both rules
are mean, or both max).
The graph is float32 throughout: it matches predict on the CPU; predict on CUDA runs under autocast
(bf16/fp16), so its probabilities differ from the graph's by that precision.

With label transfer (config transfer.enabled), the package also holds what classify needs to transfer labels:
`EmbeddingModule` (the embed job's network as it embeds a field: uint8 RGBY in, unit embedding out) as
embedding.onnx, the external train fields' embeddings and labels (references.npz) and tau (transfer.json).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import h5py
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from . import h5names as h5n
from . import versions
from .augment import NORMALIZERS, PER_IMAGE_EPS, check_crops, compose_batch, cut_crops, dihedral_batch, normalize_batch
from .files import atomic_path
from .gallery import captioned_grid, write_png
from .io import SHARD_INTERPOLATION
from .labels import CLASS_NAMES, NUM_CLASSES
from .layout import COLORS, JPEG_PLANES
from .models import build_model
from .package import EMBEDDING_ONNX, REFERENCES, TRANSFER_FILES, TRANSFER_JSON, positive_int, sha256_of, write_manifest
from .predict import REDUCERS, load_checkpoint, load_model, model_crops
from .transfer import read_embeddings
from .transforms import CHANNELS, interpolation

OPSET = 18
BIOIMAGEIO_FORMAT = "0.5.4"
TEST_ROWS = 2  # shard rows in the bioimage.io test tensors (and the cover)
CITATION = {
    "text": "Ouyang W, et al. Analysis of the Human Protein Atlas Image Classification competition. "
    "Nat Methods 16, 1254-1261 (2019)",
    "doi": "10.1038/s41592-019-0658-6",
}
# cv2's resampling flags by name, to write the ones the code uses into preprocessing.json.
CV2_INTERPOLATIONS = ("INTER_NEAREST", "INTER_LINEAR", "INTER_CUBIC", "INTER_AREA", "INTER_LANCZOS4")
MAX_RDF_ERRORS = 10
MESSAGE_CHARS = 300  # bioimageio.spec lists every SPDX id in a licence error: cut it short


TEXT_FILES = ("thresholds.json", "classes.json", "preprocessing.json")


class ExportError(ValueError):
    """What cannot be exported, or a package description that bioimage.io would refuse; names the key or field."""


def normalised(weights: Sequence[float]) -> np.ndarray:
    """Weights scaled to sum 1 (as ensemble.weighted_mean does); they must be non-negative, not all 0."""
    w = np.asarray(weights, np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    return w / w.sum()


def member_weights(model_weights: Sequence[float], n_folds: Sequence[int]) -> list[float]:
    """Per-member weights from per-model weights (results/ensemble.h5 `weights`): each model's folds
    are averaged with equal weight first, so a member weighs its model's (normalised) weight / n_folds."""
    if len(model_weights) != len(n_folds):
        raise ValueError(f"{len(model_weights)} model weights for {len(n_folds)} models")
    return [float(wm / k) for wm, k in zip(normalised(model_weights), n_folds) for _ in range(k)]


class Member(NamedTuple):
    """One model x fold checkpoint and how predict feeds it (a plain (model, color_mode) tuple is one too)."""

    model: nn.Module
    color_mode: str
    normalize: str = "imagenet"  # augment.NORMALIZERS
    offsets: np.ndarray | None = None  # its crops' top-left corners (y, x) (predict.model_crops); None: whole image
    crop_size: int | None = None


class EnsembleModule(nn.Module):
    """uint8 (N, 4, S, S) RGBY -> float32 (N, 28) ensemble probabilities.

    members: a Member (or (model, color_mode) tuple) per model x fold checkpoint; weights: one per member
    (normalised to sum 1 here, as ensemble.weighted_mean does; `member_weights` turns per-model weights into
    these). tta_combine reduces each member's crops x views.
    """

    def __init__(
        self,
        members: Sequence[Member | tuple],
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
        w = normalised(weights)
        members = [Member(*m) for m in members]
        for k, m in enumerate(members):
            try:
                check_crops(m.offsets, m.crop_size)
            except ValueError as e:
                raise ValueError(f"member {k}: {e}") from None
        self.models = nn.ModuleList([m.model.eval() for m in members])
        self.color_modes = [m.color_mode for m in members]
        self.normalizes = [m.normalize for m in members]
        # Python ints: the graph slices each crop statically.
        self.crops: list[tuple[int, list[tuple[int, int]]] | None] = [
            None if m.offsets is None else (int(m.crop_size), [(int(y), int(x)) for y, x in m.offsets]) for m in members
        ]
        self.views = [int(v) for v in views]
        self.tta_combine = tta_combine
        self.register_buffer("weights", torch.as_tensor(w, dtype=torch.float32))

    @property
    def members(self) -> list[Member]:
        return [
            Member(model, mode, norm, None if c is None else np.array(c[1], np.int64), None if c is None else c[0])
            for model, mode, norm, c in zip(self.models, self.color_modes, self.normalizes, self.crops)
        ]

    def member_probs(self, rgby: torch.Tensor) -> torch.Tensor:
        """(M, N, 28): each member's probabilities combined over its crops x TTA views (predict's `probs`)."""
        out = []
        for model, mode, norm, crops in zip(self.models, self.color_modes, self.normalizes, self.crops):
            size, offsets = (None, None) if crops is None else crops
            parts = cut_crops(rgby, offsets, size)
            # Normalised per crop, as predict does (per_image statistics are the crop's).
            xs = [normalize_batch(compose_batch(part, mode), norm) for part in parts]
            # All crops x views in one batch, crop-major (predict scores them one at a time; eval-mode layers
            # are per sample).
            logits = model(torch.cat([dihedral_batch(x, v) for x in xs for v in self.views]))
            p = torch.sigmoid(logits.float()).reshape(len(xs) * len(self.views), rgby.shape[0], -1)
            out.append(p.amax(0) if self.tta_combine == "max" else p.sum(0) / len(p))
        return torch.stack(out)

    def describe(self) -> list[dict]:
        """What the graph does per member, for preprocessing.json: colour mode, normalisation, crops."""
        return [
            {
                "color_mode": mode,
                "normalize": norm,
                "crop_size": None if c is None else c[0],
                "crop_offsets_yx": None if c is None else [list(o) for o in c[1]],
            }
            for mode, norm, c in zip(self.color_modes, self.normalizes, self.crops)
        ]

    def forward(self, rgby: torch.Tensor) -> torch.Tensor:
        return torch.tensordot(self.weights, self.member_probs(rgby), dims=1)

    @classmethod
    def from_checkpoints(
        cls,
        checkpoints: Sequence[Sequence[str | Path]],
        model_weights: Sequence[float],
        views: Sequence[int],
        tta_combine: str,
        *,
        crops: int,
        crop_placement: str,
        seed: int,
    ) -> EnsembleModule:
        """From the best.pt files of each model (one list per model, one file per fold), the models'
        ensemble weights (results/ensemble.h5 `weights`, in the same order) and the predict settings
        (views, tta_combine, crops, crop_placement, seed: each member's crops as predict takes them)."""
        members, sizes = [], set()
        for files in checkpoints:
            for f in files:
                model, cfg = load_model(load_checkpoint(f), torch.device("cpu"))
                offsets = model_crops(cfg, crops, crop_placement, seed)
                crop_size = None if offsets is None else cfg["crop_size"]
                members.append(Member(model, cfg["color_mode"], cfg["normalize"], offsets, crop_size))
                sizes.add(cfg["image_size"])
        if len(sizes) > 1:
            raise ValueError(f"the members' image sizes differ ({sorted(sizes)}): one graph takes one input size")
        module = cls(members, views, tta_combine, member_weights(model_weights, [len(f) for f in checkpoints]))
        module.image_size = sizes.pop()  # the graph's input side
        return module


# --- label transfer: the embedding network, the references, tau ----------------------------------------------

EMBED_SETTINGS = ("backbone", "embedding_size", "image_size", "color_mode", "normalize")
RERUN_EMBED = "snakemake --forcerun embed"


class EmbeddingModule(nn.Module):
    """uint8 (N, 4, M, M) RGBY -> float32 (N, D) unit embeddings, as the embed job embeds a field (embed.embed_rows):
    colour composition and normalisation without augmentation (augment.prepare_batch's steps), the network, then
    L2 normalisation. M = image_size, the network's input side (shard rows are resized to it: transforms.resize)."""

    def __init__(
        self,
        net: nn.Module,
        image_size: int,
        embedding_size: int,
        color_mode: str = "rgby",
        normalize: str = "imagenet",
    ):
        super().__init__()
        if normalize not in NORMALIZERS:
            raise ValueError(f"unknown normalize {normalize!r} (one of {', '.join(NORMALIZERS)})")
        self.net = net.eval()
        self.image_size, self.embedding_size = int(image_size), int(embedding_size)
        self.color_mode, self.normalize = color_mode, normalize

    def forward(self, rgby: torch.Tensor) -> torch.Tensor:
        x = normalize_batch(compose_batch(rgby, self.color_mode), self.normalize)
        return F.normalize(self.net(x).float(), dim=1)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> EmbeddingModule:
        """The network of results/transfer/embed.pt (rule embed): rebuilt from its settings, weights loaded."""
        state, settings = read_embed_model(path)
        net = build_model(
            settings["backbone"],
            CHANNELS[settings["color_mode"]],
            pretrained=False,
            num_classes=settings["embedding_size"],
            head="linear",
        )
        try:
            net.load_state_dict(state[h5n.CKPT_MODEL])
        except RuntimeError as e:
            raise ExportError(
                f"{path}: the weights do not fit a {settings['backbone']} network ({e}): {RERUN_EMBED}"
            ) from None
        s = settings
        return cls(net, s["image_size"], s["embedding_size"], s["color_mode"], s["normalize"])


def read_embed_model(path: str | Path) -> tuple[dict, dict]:
    """(state, settings) of embed.pt, checked: its format, a state_dict, and the settings the network is built from."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise ExportError(
            f"{path}: cannot be read as the embedding network ({type(e).__name__}: {e}): {RERUN_EMBED}"
        ) from None
    if not isinstance(state, dict) or state.get(h5n.FORMAT) != h5n.CHECKPOINT_FORMAT:
        got = state.get(h5n.FORMAT) if isinstance(state, dict) else None
        raise ExportError(f"{path}: format {got!r}, expected {h5n.CHECKPOINT_FORMAT}: {RERUN_EMBED}")
    settings = state.get("settings")
    if not isinstance(settings, dict) or not isinstance(state.get(h5n.CKPT_MODEL), dict):
        raise ExportError(f"{path}: no `{h5n.CKPT_MODEL}` state_dict or `settings`: {RERUN_EMBED}")
    if missing := [k for k in EMBED_SETTINGS if k not in settings]:
        raise ExportError(f"{path}: settings lack {', '.join(missing)}: {RERUN_EMBED}")
    bad = [k for k in ("embedding_size", "image_size") if not positive_int(settings[k])]
    bad += [] if settings["color_mode"] in CHANNELS else ["color_mode"]
    bad += [] if settings["normalize"] in NORMALIZERS else ["normalize"]
    if bad:
        raise ExportError(f"{path}: settings {', '.join(f'{k} {settings[k]!r}' for k in bad)} invalid: {RERUN_EMBED}")
    return state, settings


@dataclass(frozen=True)
class References:
    """The fields whose labels classify can take: the external train fields of embeddings.h5."""

    ids: np.ndarray  # str (R,)
    labels: np.ndarray  # uint8 (R, 28)
    embeddings: np.ndarray  # float32 (R, D), unit rows


def read_references(embeddings_h5: str | Path) -> tuple[References, float | None]:
    """The references (external, not test, rows of embeddings.h5: those rule transfer matches test fields against)
    and the held-out retrieval accuracy (None when nothing was held out)."""
    emb = read_embeddings(embeddings_h5)
    try:
        rows = emb.reference_rows()
    except ValueError as e:
        raise ExportError(str(e)) from None
    refs = References(
        np.array(emb.ids[rows].tolist(), dtype=str),
        emb.labels[rows].astype(np.uint8),
        np.ascontiguousarray(emb.vectors[rows], np.float32),
    )
    return refs, None if np.isnan(emb.retrieval) else float(emb.retrieval)


def read_tau(metrics_json: str | Path) -> float | None:
    """tau of results/transfer/metrics.json (rule transfer): a similarity in [-1, 1], or None (never transfer)."""
    try:
        tau = json.loads(Path(metrics_json).read_text())["transfer"]["tau"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ExportError(f"{metrics_json}: no transfer.tau ({type(e).__name__}: {e}): rerun transfer") from None
    if tau is not None and (isinstance(tau, bool) or not isinstance(tau, int | float) or not -1 <= tau <= 1):
        raise ExportError(f"{metrics_json}: transfer.tau {tau!r} is neither null nor a similarity in [-1, 1]")
    return None if tau is None else float(tau)


@dataclass(frozen=True)
class TransferExport:
    """What the package's label transfer is made of (rule export's inputs embed_model, embeddings, transfer_metrics)."""

    module: EmbeddingModule
    references: References
    tau: float | None  # None: never transfer
    retrieval_accuracy: float | None  # held-out top-1 retrieval of the embedding (None: nothing held out)

    @classmethod
    def load(cls, embed_model: str | Path, embeddings_h5: str | Path, metrics_json: str | Path) -> TransferExport:
        module = EmbeddingModule.from_checkpoint(embed_model)
        refs, retrieval = read_references(embeddings_h5)
        if refs.embeddings.shape[1] != module.embedding_size:
            raise ExportError(
                f"{embeddings_h5}: embeddings of {refs.embeddings.shape[1]} dimensions, {embed_model} makes "
                f"{module.embedding_size}: not from the same embed job ({RERUN_EMBED})"
            )
        return cls(module, refs, read_tau(metrics_json), retrieval)

    def describe(self, shard_size: int) -> dict:
        """transfer.json: tau, the embedding graph's input and output, and how classify uses them."""
        m = self.module
        return {
            "tau": self.tau,
            "image_size": m.image_size,
            "embedding_size": m.embedding_size,
            "retrieval_accuracy": self.retrieval_accuracy,
            "references": len(self.references.ids),
            "input": {"name": "rgby", "dtype": "uint8", "shape": ["batch", 4, m.image_size, m.image_size]},
            "output": {"name": "embedding", "dtype": "float32", "shape": ["batch", m.embedding_size], "norm": 1},
            "resize": {
                "shard_size": shard_size,
                "size": m.image_size,
                "interpolation": cv2_name(interpolation(shard_size, m.image_size)),
            },
            "inside_the_graph": f"x / 255, colour composition {m.color_mode}, normalisation {m.normalize}, the "
            "network, L2 normalisation",
            "rule": "a field takes the labels of its most similar reference (cosine similarity of embeddings, "
            "references.npz) when that similarity is at least tau; tau null: never",
        }


def export_onnx(module: nn.Module, size: int, path: str | Path, opset: int = OPSET, output_name: str = "probs") -> None:
    """Write `module` as ONNX: input `rgby` uint8 (batch, 4, size, size), output `output_name` (batch, ...),
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
            output_names=[output_name],
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


@dataclass(frozen=True)
class ExportSettings:
    """What goes into the exported package; defaults live in the config schema only (from_config)."""

    views: list[int]  # TTA views inside the graph (export.tta_views, else predict.tta_views)
    tta_combine: str  # over each member's crops x views
    at_least_one: bool
    datasets: list[dict]  # the train datasets: their formats and bits say how images were read
    authors: list[str]  # named in the bioimage.io description
    license: str  # SPDX id
    crops: int  # predict.crops: members with a crop_size score as many crops, as predict does
    crop_placement: str
    seed: int  # of the seeded crop placement

    @classmethod
    def from_config(cls, config: dict) -> ExportSettings:
        if config["tiling"] != "none":
            raise ValueError("tiling: the exported graph scores whole images; models trained on tiles are not exported")
        views = config["export"]["tta_views"] or config["predict"]["tta_views"]
        train = [d for d in config["datasets"] if d["role"] == "train"]
        e = config["export"]
        return cls(
            views,
            config["predict"]["tta_combine"],
            config["thresholds"]["at_least_one"],
            train,
            e["authors"],
            e["license"],
            config["predict"]["crops"],
            config["predict"]["crop_placement"],
            config["seed"],
        )


def cv2_name(flag: int | None) -> str | None:
    """'cv2.INTER_AREA' for cv2.INTER_AREA; None for None (no resize)."""
    if flag is None:
        return None
    names = [n for n in CV2_INTERPOLATIONS if getattr(cv2, n) == flag]
    if not names:
        raise ValueError(f"cv2 interpolation flag {flag} is none of {', '.join(CV2_INTERPOLATIONS)}")
    return f"cv2.{names[0]}"


def shard_size(files: Sequence[str | Path]) -> int:
    """The side S of the shards' rows (their `image_size`), one for all; whole images only."""
    sizes = {}
    for f in files:
        with h5py.File(f, "r") as h5:
            if str(h5.attrs["tiling"]) != "none":
                raise ExportError(f"{f}: tiled rows (tiling {h5.attrs['tiling']}); the graph scores whole images")
            sizes.setdefault(int(h5.attrs["image_size"]), str(f))
    if len(sizes) != 1:
        raise ExportError(f"the shards' image sizes differ or are missing: {sizes or files}")
    return next(iter(sizes))


def preprocessing(size: int, datasets: list[dict], shard_size: int, members: list[dict] | None = None) -> dict:
    """How a field of view becomes the graph's input: decoded and resized to shard_size as the shard step does
    it (io, shards), then resized to the models' size as predict does it (transforms.resize); the
    interpolations are named from the constants the code uses. members: EnsembleModule.describe(), what the
    graph does per member (recorded when given)."""
    out = {
        "input": {"name": "rgby", "dtype": "uint8", "shape": ["batch", 4, size, size], "channel_order": list(COLORS)},
        "channel_files": "{Id}_{red,green,blue,yellow}.{png|tif|tiff|jpg}, one grey plane per colour",
        "formats": {
            "png": "8-bit grey (16-bit is scaled as tiff)",
            "tiff": "uint8, or uint16 mapped linearly: v8 = round(v * 255 / (2**bits - 1)), values above clipped",
            "jpg": "HPAv18 RGB JPEG with the signal in its colour's plane(s): "
            + ", ".join(f"{c} from BGR plane(s) {list(p)}" for c, p in JPEG_PLANES.items())
            + " (yellow: the rounded mean of R and G)",
        },
        "bits_of_training_data": {d["name"]: {"format": d["format"], "bits": d["bits"]} for d in datasets},
        "resize": {
            "shard_size": shard_size,
            "shard_interpolation": cv2_name(SHARD_INTERPOLATION),
            "size": size,
            "interpolation": cv2_name(interpolation(shard_size, size)),
            "steps": "each decoded channel plane -> shard_size x shard_size (shard_interpolation, shrinking or "
            "enlarging), stacked as uint8 RGBY (H, W, 4); then that image -> size x size (interpolation; null: "
            "shard_size == size, no resize), uint8; then transposed to (4, size, size)",
        },
        "inside_the_graph": "x / 255, per member: its crops (crop_size squares at crop_offsets_yx, top-left "
        "corners (y, x); none: the whole image), colour composition, normalisation (imagenet: ImageNet mean and std "
        f"per channel; per_image: (x - mean) / (std + {PER_IMAGE_EPS:.6g}) with each crop's own per-channel mean and "
        "population std), TTA views, sigmoid, combined over crops x views by tta_combine; then the members' "
        "weighted mean",
    }
    if members is not None:
        out["members"] = members
    return out


def transfer_readme(t: dict) -> str:
    """The README's section on label transfer, from transfer.json's content."""
    tau = "null: never (transfer did not raise the out-of-fold F1)" if t["tau"] is None else f"{t['tau']:.6f}"
    retrieval = t["retrieval_accuracy"]
    retrieval = "not measured (no antibody held out)" if retrieval is None else f"{retrieval:.4f}"
    return f"""
## Label transfer

Included: a field can take the labels of the most similar of {t["references"]} labelled external fields
(HPAv18), found by an antibody embedding (an ArcFace network trained to tell antibodies apart).

- embedding.onnx: uint8 RGBY (batch, 4, {t["image_size"]}, {t["image_size"]}) -> unit embedding (batch,
  {t["embedding_size"]}); a shard row is resized to {t["image_size"]} px as for ensemble.onnx (transfer.json `resize`).
- references.npz: the external fields' `ids`, `labels` (uint8, one column per class of classes.json) and
  `embeddings` (float32, unit rows).
- transfer.json: tau = {tau}; held-out top-1 retrieval accuracy of the embedding {retrieval}.

`snakemake classify` (config classify.transfer: true, the default) embeds every field, finds its nearest
reference by cosine similarity and, where that similarity is at least tau, replaces the ensemble's labels by
the reference's. predictions.csv then has three more columns: neighbour_id, similarity and transferred (true
where the labels were replaced); the probability columns stay the ensemble's. With classify.transfer: false
the labels are the ensemble's alone.
"""


def package_readme(
    metrics: dict,
    models: list[str],
    n_folds: int,
    size: int,
    views: list[int],
    crops: str = "",
    transfer: dict | None = None,
    software: dict | None = None,
) -> str:
    """crops: how members score crops (crops_phrase), empty when none does; transfer: transfer.json's content
    when the package holds label transfer; software: the stages' environments (versions.merge), as a table."""
    e = metrics["ensemble"]
    transfer_text = transfer_readme(transfer) if transfer is not None else ""
    software_text = software_readme(software) if software else ""
    return f"""# HPA protein-localisation classifier

An ensemble of {len(models)} model(s) ({", ".join(models)}) x {n_folds} folds, trained by the HPA image
classification workflow on {metrics["n_train"]} fields of view, at {size} px, with {len(views)} test-time
augmentation views{crops}. It predicts which of 28 subcellular locations (classes.json) a protein shows in a
4-channel immunofluorescence field: red microtubules, green the protein, blue nuclei, yellow ER.

- ensemble.onnx: uint8 RGBY (batch, 4, {size}, {size}) -> probabilities (batch, 28); preprocessing.json says
  how to make the input from channel images; thresholds.json turns probabilities into labels
  (class c when p > threshold[c]; with at_least_one, the argmax when no class passes).
- rdf.yaml: the bioimage.io model description (test tensors test_input.npy / test_output.npy, cover.png);
  manifest.json: the sha256 of every file, checked by the workflow's `snakemake classify`.

## Validation

- Out-of-fold macro F1: {e["f1_cross_fitted"]:.4f} (thresholds `{e["final_method"]}`, cross-fitted: each fold
  scored with thresholds fitted on the other folds); {e["f1_at_0.5"]:.4f} at 0.5; a prior-only baseline
  scores {metrics["prior_baseline"]["f1"]:.4f}.
- The ONNX graph reproduces the PyTorch ensemble on real training rows (checked at export, max abs
  difference at most 1e-4).

## Intended use

Research on fields imaged like the Human Protein Atlas (confocal, 4 channels, the same stains). It has
not been validated on other microscopes, stains or cell lines: check it on labelled fields of your own
before relying on it.
{transfer_text}{software_text}"""


def software_readme(merged: dict) -> str:
    """The README's section on what ran: the key packages of each stage's environment (versions.merge)."""
    return f"""
## Software versions

Read by each job of the workflow from its own running environment (every package: the workflow's
results/metrics.json, `software_versions`):

{versions.markdown_table(merged)}"""


def crops_phrase(module: EnsembleModule, settings: ExportSettings) -> str:
    """' x 4 crops (fixed placement) of 224 px' for the README; empty when no member scores crops."""
    sizes = sorted({c[0] for c in module.crops if c is not None})
    if not sizes:
        return ""
    return f" x {settings.crops} crops ({settings.crop_placement} placement) of {'/'.join(map(str, sizes))} px"


def bioimageio_rdf(size: int, settings: ExportSettings, metrics: dict, sha: dict[str, str]) -> dict:
    """The bioimage.io model description (format 0.5) of the package; `sha` holds each file's sha256."""
    e = metrics["ensemble"]
    return {
        "format_version": BIOIMAGEIO_FORMAT,
        "type": "model",
        "name": "HPA protein localisation ensemble",
        "description": (
            "Multi-label classifier of 28 subcellular protein locations in 4-channel (RGBY) immunofluorescence "
            f"fields of view, an ensemble with test-time augmentation; out-of-fold macro F1 {e['f1_cross_fitted']:.4f}"
        ),
        "authors": [{"name": a} for a in settings.authors],
        "cite": [CITATION],
        "license": settings.license,
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": [
            "classification",
            "fluorescence-light-microscopy",
            "2d",
            "human-protein-atlas",
            "protein-localization",
        ],
        "inputs": [
            {
                "id": "rgby",
                "description": "uint8 RGBY field of view resized to the model's size (preprocessing.json)",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": list(COLORS)},
                    {"type": "space", "id": "y", "size": size},
                    {"type": "space", "id": "x", "size": size},
                ],
                "test_tensor": {"source": "test_input.npy", "sha256": sha["test_input.npy"]},
                "data": {"type": "uint8", "range": [0, 255]},
            }
        ],
        "outputs": [
            {
                "id": "probs",
                "description": "per-class probability; labels: p > thresholds.json",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": list(CLASS_NAMES)}],
                "test_tensor": {"source": "test_output.npy", "sha256": sha["test_output.npy"]},
                "data": {"type": "float32", "range": [0.0, 1.0]},
            }
        ],
        "weights": {"onnx": {"source": "ensemble.onnx", "sha256": sha["ensemble.onnx"], "opset_version": OPSET}},
        "attachments": [{"source": n, "sha256": sha[n]} for n in (*TEXT_FILES, *TRANSFER_FILES) if n in sha],
    }


def _field(rdf: dict, loc: Sequence) -> str:
    """pydantic's error location -> the field of the description, e.g. 'inputs[0].axes[2].size': the parts that
    index into `rdf`, and a last part that names a missing key; union tags ('space', 'ParameterizedSize') and
    validator names ('function-after[...]', 'constrained-int') are left out."""
    out, node = "", rdf
    for k, part in enumerate(loc):
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out += f"[{part}]"
            node = node[part]
        elif isinstance(node, dict) and part in node:
            out += f".{part}" if out else str(part)
            node = node[part]
        elif k == len(loc) - 1 and isinstance(part, str) and part.isidentifier() and part.islower():
            out += f".{part}" if out else part  # a required key that is missing (fields are snake_case)
    return out or "(top level)"


def check_rdf(rdf: dict, root: Path | None = None) -> None:
    """bioimage.io's own format validation (bioimageio.spec) of a package description, offline: without
    `root` the files it names are not opened (the package is not written yet); with it, they are checked
    in that folder (sha256, test tensors against the axes). Raises ExportError naming each failing field."""
    # Imported here: it takes ~2 s, and only the export job validates.
    from bioimageio.spec import ValidationContext, validate_format

    context = ValidationContext(root=root or Path(), perform_io_checks=root is not None, raise_errors=False)
    summary = validate_format(rdf, context=context)
    if summary.status != "failed":
        return
    seen: dict[str, str] = {}  # a field fails once per alternative type (e.g. a licence id, or a file): first kept
    for detail in summary.details:
        for error in detail.errors:
            msg = " ".join(str(error.msg).split())
            seen.setdefault(_field(rdf, error.loc), msg if len(msg) <= MESSAGE_CHARS else msg[:MESSAGE_CHARS] + " ...")
    lines = [f"{field}: {msg}" for field, msg in list(seen.items())[:MAX_RDF_ERRORS]]
    if len(seen) > MAX_RDF_ERRORS:
        lines.append(f"... and {len(seen) - MAX_RDF_ERRORS} more")
    hint = (
        f" (export.license {rdf.get('license')!r} is no SPDX licence id, e.g. CC-BY-4.0)" if "license" in seen else ""
    )
    raise ExportError(
        f"the package's bioimage.io description (rdf.yaml, format {rdf.get('format_version')}) fails "
        f"bioimageio.spec's validation{hint}:\n  " + "\n  ".join(lines)
    )


# The sha256 of files not written yet, for checking the description before anything is written.
UNWRITTEN = "0" * 64


def write_package(
    out_dir: str | Path,
    module: EnsembleModule,
    size: int,
    settings: ExportSettings,
    thresholds: np.ndarray,
    metrics: dict,
    models: list[str],
    n_folds: int,
    sample: np.ndarray,
    max_diff: float = 1e-4,
    *,
    shard_size: int,
    transfer: TransferExport | None = None,
    transfer_sample: np.ndarray | None = None,
) -> float:
    """Write the package folder (files written under temporary names, then moved in; manifest.json last);
    returns the ONNX vs PyTorch max abs difference on `sample` (model inputs made from real shard rows,
    uint8 (N, 4, size, size)), which must be at most max_diff. The first TEST_ROWS rows become the
    bioimage.io test tensors. shard_size: the side S of the shard rows the sample was resized from.
    transfer: label transfer to include (write_transfer), its graph checked on transfer_sample (the same
    shard rows resized to the embedding's input size); None: a package without it.

    The bioimage.io description is validated first (nothing written when it fails: a licence that is no SPDX
    id), and again with its files before rdf.yaml and manifest.json are written."""
    names = ("ensemble.onnx", "test_input.npy", "test_output.npy", *TEXT_FILES)
    sha = dict.fromkeys((*names, *(TRANSFER_FILES if transfer is not None else ())), UNWRITTEN)
    out = Path(out_dir)
    try:
        check_rdf(bioimageio_rdf(size, settings, metrics, sha))
    except ExportError as e:
        raise ExportError(f"{out}: no package written: {e}") from None
    check_sample("sample", sample, size)
    if transfer is not None:
        check_sample("transfer_sample", transfer_sample, transfer.module.image_size)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "ensemble.onnx") as tmp:
        export_onnx(module, size, tmp)
        diff = check_onnx(tmp, module, sample)
        if diff > max_diff:
            raise ValueError(f"ONNX and PyTorch differ by {diff:.2e} on {len(sample)} shard rows (> {max_diff})")
    described = None
    if transfer is not None:
        described = write_transfer(out, transfer, transfer_sample, shard_size, max_diff)
    texts = {
        "thresholds.json": {
            "method": metrics["ensemble"]["final_method"],
            "at_least_one": settings.at_least_one,
            "thresholds": [float(t) for t in thresholds],  # exact: a rounded threshold flips labels near it
        },
        "classes.json": {str(i): name for i, name in enumerate(CLASS_NAMES)},
        "preprocessing.json": preprocessing(size, settings.datasets, shard_size, module.describe()),
    }
    for name, value in texts.items():
        with atomic_path(out / name) as tmp:
            tmp.write_text(json.dumps(value, indent=1) + "\n")
    with atomic_path(out / "README.md") as tmp:
        # What ran: the stages metrics.json records, and this job's own environment.
        software = versions.merge({**metrics.get("software_versions", {}), "export": [versions.environment_versions()]})
        text = package_readme(
            metrics,
            models,
            n_folds,
            size,
            settings.views,
            crops_phrase(module, settings),
            transfer=described,
            software=software,
        )
        tmp.write_text(text)
    # bioimage.io: test tensors (real rows and the PyTorch ensemble's output), cover, description.
    rows = np.ascontiguousarray(sample[:TEST_ROWS])
    with torch.no_grad():
        expected = module.eval()(torch.as_tensor(rows)).numpy().astype(np.float32)
    for name, value in {"test_input.npy": rows, "test_output.npy": expected}.items():
        with atomic_path(out / name) as tmp, tmp.open("wb") as f:
            np.save(f, value)
    write_png(captioned_grid(list(rows.transpose(0, 2, 3, 1)), [[]] * len(rows), lines=0), out / "cover.png")
    for name in sha:
        with (out / name).open("rb") as f:
            sha[name] = sha256_of(f)[0]
    rdf = bioimageio_rdf(size, settings, metrics, sha)
    try:
        check_rdf(rdf, out)  # what is written: its files' sha256, the test tensors' shapes
    except ExportError as e:
        raise ExportError(f"{out}: no rdf.yaml or manifest.json written (not a package): {e}") from None
    with atomic_path(out / "rdf.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(rdf, sort_keys=False, width=120))
    write_manifest(out)
    return diff


def check_sample(name: str, sample: np.ndarray | None, size: int) -> None:
    """A graph's check rows: uint8 (N, 4, size, size), N >= 1."""
    if sample is None or sample.ndim != 4 or sample.shape[1:] != (4, size, size) or sample.dtype != np.uint8:
        got = "None" if sample is None else f"{sample.dtype} {sample.shape}"
        raise ValueError(f"{name}: expected uint8 (N, 4, {size}, {size}) inputs, got {got}")
    if not len(sample):
        raise ValueError(f"{name}: no rows to check the graph on")


def write_transfer(
    out: Path, transfer: TransferExport, sample: np.ndarray, shard_size: int, max_diff: float = 1e-4
) -> dict:
    """embedding.onnx (checked against the PyTorch module on `sample`), references.npz and transfer.json in the
    package folder `out`; returns transfer.json's content (with the check's difference logged by the caller)."""
    m = transfer.module
    with atomic_path(out / EMBEDDING_ONNX) as tmp:
        export_onnx(m, m.image_size, tmp, output_name="embedding")
        diff = check_onnx(tmp, m, sample)
        if diff > max_diff:
            raise ValueError(f"embedding ONNX and PyTorch differ by {diff:.2e} on {len(sample)} rows (> {max_diff})")
    refs = transfer.references
    if refs.labels.shape != (len(refs.ids), NUM_CLASSES) or refs.embeddings.shape != (len(refs.ids), m.embedding_size):
        raise ValueError(
            f"references: {len(refs.ids)} ids, labels {refs.labels.shape}, embeddings {refs.embeddings.shape}; "
            f"expected (R, {NUM_CLASSES}) and (R, {m.embedding_size})"
        )
    with atomic_path(out / REFERENCES) as tmp, tmp.open("wb") as f:  # a file object: np.savez adds no suffix
        np.savez(
            f,
            ids=np.asarray(refs.ids, dtype=str),
            labels=refs.labels.astype(np.uint8),
            embeddings=refs.embeddings.astype(np.float32),
        )
    described = {**transfer.describe(shard_size), "onnx_max_abs_difference": diff}
    with atomic_path(out / TRANSFER_JSON) as tmp:
        tmp.write_text(json.dumps(described, indent=1) + "\n")
    return described


def zip_package(folder: str | Path, zip_path: str | Path) -> None:
    """The package folder as one zip (its files at the top level)."""
    folder = Path(folder)
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f.name)
