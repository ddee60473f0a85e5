"""Label transfer in the exported package and in classify: the package's embedding graph embeds a field as the
embed job does, its references and tau are written and read back verified, and classify gives a field close
enough to a reference that reference's labels (columns neighbour_id, similarity, transferred); without transfer
(config off, or a package without it) predictions.csv is the ensemble's, as before."""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import onnx
import pandas as pd
import pytest
import torch
import yaml

from hpaflow import h5names as h5n
from hpaflow import versions
from hpaflow.classify import TRANSFER_COLUMNS, model_input, run_classify
from hpaflow.data import ShardRows
from hpaflow.embed import embed_rows
from hpaflow.export import (
    EmbeddingModule,
    EnsembleModule,
    ExportError,
    ExportSettings,
    TransferExport,
    check_onnx,
    write_package,
    zip_package,
)
from hpaflow.labels import CLASS_NAMES
from hpaflow.models import build_model
from hpaflow.package import Package, PackageError, write_manifest

SHARD = 32  # the shard rows' side, and the ensemble's input
EMB_SIZE = 24  # the embedding network's input: rows are resized for it
DIM = 16  # embedding size
COLUMNS = ["Id", "Predicted", "Labels", *CLASS_NAMES]
SETTINGS = ExportSettings(
    [0, 1], "mean", True, [{"name": "d", "format": "png", "bits": 8}], ["A B"], "CC-BY-4.0", 0, "fixed", 0
)
METRICS = {
    "n_train": 10,
    "ensemble": {"f1_cross_fitted": 0.3, "f1_at_0.5": 0.2, "final_method": "per_class"},
    "prior_baseline": {"f1": 0.05},
}
THRESHOLDS = np.full(28, 0.5)


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Tiny convolutions: torch on one thread for the whole module (conftest)."""


def rgby_rows(n: int, seed: int) -> np.ndarray:
    """n random uint8 (SHARD, SHARD, 4) rows, each channel at its own brightness (so their embeddings differ)."""
    rng = np.random.default_rng(seed)
    gain = rng.uniform(0.0, 1.0, (n, 1, 1, 4))
    return (rng.integers(0, 256, (n, SHARD, SHARD, 4)) * gain).astype(np.uint8)


def write_shard_file(path: Path, ids: list[str], rows: np.ndarray) -> str:
    """A whole-image shard as the shard step writes it (the keys classify and ShardRows read)."""
    with h5py.File(path, "w") as h5:
        h5.create_dataset(h5n.IMAGES, data=rows)
        h5.create_dataset(h5n.IDS, data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        h5.attrs[h5n.FORMAT] = h5n.SHARD_FORMAT
        h5.attrs["image_size"] = SHARD
        h5.attrs["tiling"] = "none"
    return str(path)


def write_embed_model(path: Path, seed: int = 0) -> dict:
    """results/transfer/embed.pt as rule embed writes it: a freshly built resnet18 embedding network."""
    torch.manual_seed(seed)
    net = build_model("resnet18", 4, pretrained=False, num_classes=DIM, head="linear")
    settings = {"backbone": "resnet18", "embedding_size": DIM, "image_size": EMB_SIZE}
    settings |= {"color_mode": "rgby", "normalize": "imagenet"}
    state = {h5n.FORMAT: h5n.CHECKPOINT_FORMAT, h5n.CKPT_MODEL: net.state_dict(), "settings": settings}
    torch.save(state, path)
    return state


def embed_job_net(state: dict) -> torch.nn.Module:
    """The embed job's network from the same weights, built without EmbeddingModule."""
    net = build_model("resnet18", 4, pretrained=False, num_classes=DIM, head="linear")
    net.load_state_dict(state[h5n.CKPT_MODEL])
    return net.eval()


def embed_job(state: dict, shard: str) -> np.ndarray:
    """hpaflow.embed's own embedding of a shard's rows (ShardDataset resize, prepare_batch, net, normalise)."""
    rows = ShardRows.from_files([shard])
    _, emb = embed_rows(embed_job_net(state), rows, EMB_SIZE, 3, torch.device("cpu"), 0, "test")
    return emb


# The fields of embeddings.h5: (id, test, external, labels). r* are the references (external train fields);
# k* are train fields of a non-external dataset and x0 an external-flagged test field: no reference.
REF_LABELS = {"r0": [0], "r1": [5, 25], "r2": [3, 7, 11], "r3": [27]}
OTHER = [("k0", False, False, [1]), ("k1", False, False, [2]), ("x0", True, True, [])]


def write_embeddings_h5(path: Path, ids: list[str], test, external, labels: np.ndarray, emb: np.ndarray) -> None:
    """embeddings.h5 in rule embed's layout (hpaflow.h5names)."""
    strings = h5py.string_dtype()
    with h5py.File(path, "w") as h5:
        h5.create_dataset(h5n.IDS, data=np.array(ids, dtype=object), dtype=strings)
        h5.create_dataset(h5n.EMB_DATASETS, data=np.array(["d"] * len(ids), dtype=object), dtype=strings)
        h5.create_dataset(h5n.EMB_TEST, data=np.array(test, bool))
        h5.create_dataset(h5n.EMB_EXTERNAL, data=np.array(external, bool))
        h5.create_dataset(h5n.EMB_GROUP, data=np.where(test, -1, np.arange(len(ids))).astype(np.int64))
        h5.create_dataset(h5n.EMB_TRAINED, data=~np.array(test, bool))
        h5.create_dataset(h5n.LABELS, data=labels.astype(np.uint8))
        h5.create_dataset(h5n.EMBEDDINGS, data=emb.astype(np.float32))
        h5.attrs[h5n.FORMAT] = h5n.EMBEDDINGS_FORMAT
        h5.attrs[h5n.EMB_RETRIEVAL] = 0.75


def labels_of(classes: list[int]) -> np.ndarray:
    y = np.zeros(28, np.uint8)
    y[classes] = 1
    return y


@dataclass
class Tiny:
    root: Path
    state: dict  # embed.pt
    embed_pt: Path
    embeddings_h5: Path
    metrics_json: Path
    transfer: TransferExport
    ensemble: EnsembleModule
    with_transfer: Path  # package folder with label transfer
    without: Path  # the same ensemble, no label transfer
    zip: Path  # with_transfer zipped
    ref_rows: np.ndarray  # uint8 (4, SHARD, SHARD, 4): the references' shard rows
    ref_emb: np.ndarray  # their embeddings (as embeddings.h5 holds them)
    fields: list[str]  # shards of the fields to classify
    field_ids: list[str]
    field_rows: np.ndarray
    tau: float


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    """Two packages of one random resnet18 ensemble (32 px): with label transfer (a random resnet18 embedding at
    24 px, 4 references) and without. Fields to classify: f0 is reference r2's very row, f1-f3 random rows;
    tau sits between f1-f3's best similarity and 1, so f0 alone takes its reference's labels."""
    root = tmp_path_factory.mktemp("transfer")
    state = write_embed_model(root / "embed.pt")
    ref_rows = rgby_rows(4, seed=1)
    ref_shard = write_shard_file(root / "refs.h5", list(REF_LABELS), ref_rows)
    ref_emb = embed_job(state, ref_shard)
    rng = np.random.default_rng(2)
    other_emb = rng.normal(size=(len(OTHER), DIM))
    other_emb /= np.linalg.norm(other_emb, axis=1, keepdims=True)
    ids = [*REF_LABELS, *(o[0] for o in OTHER)]
    labels = np.stack([labels_of(c) for c in REF_LABELS.values()] + [labels_of(o[3]) for o in OTHER])
    write_embeddings_h5(
        root / "embeddings.h5",
        ids,
        [False] * 4 + [o[1] for o in OTHER],
        [True] * 4 + [o[2] for o in OTHER],
        labels,
        np.concatenate([ref_emb, other_emb]),
    )
    field_ids = ["f0", "f1", "f2", "f3"]
    field_rows = np.concatenate([ref_rows[2:3], rgby_rows(3, seed=3)])
    fields = [
        write_shard_file(root / "0.h5", field_ids[:3], field_rows[:3]),
        write_shard_file(root / "1.h5", field_ids[3:], field_rows[3:]),
    ]
    others = embed_job(state, fields[0])[1:].tolist() + embed_job(state, fields[1]).tolist()
    best_other = float((np.array(others) @ ref_emb.T).max())
    assert best_other < 0.9995  # rows of other brightness: apart enough for a tau between (ONNX differs by ~1e-7)
    tau = round((best_other + 1) / 2, 6)
    (root / "metrics.json").write_text(json.dumps({"transfer": {"tau": tau, "retrieval_accuracy": 0.75}}))

    transfer = TransferExport.load(root / "embed.pt", root / "embeddings.h5", root / "metrics.json")
    torch.manual_seed(0)
    ensemble = EnsembleModule([(build_model("resnet18", 3).eval(), "gyb")], [0, 1], "mean", [1.0])
    sample = np.ascontiguousarray(field_rows.transpose(0, 3, 1, 2))
    transfer_sample = model_input(field_rows, EMB_SIZE)
    args = (ensemble, SHARD, SETTINGS, THRESHOLDS, METRICS, ["m"], 1, sample)
    write_package(root / "pkg", *args, shard_size=SHARD, transfer=transfer, transfer_sample=transfer_sample)
    write_package(root / "plain", *args, shard_size=SHARD)
    zip_package(root / "pkg", root / "pkg.zip")
    return Tiny(
        root,
        state,
        root / "embed.pt",
        root / "embeddings.h5",
        root / "metrics.json",
        transfer,
        ensemble,
        root / "pkg",
        root / "plain",
        root / "pkg.zip",
        ref_rows,
        ref_emb,
        fields,
        field_ids,
        field_rows,
        tau,
    )


# --- the embedding graph ----------------------------------------------------------------------------------


def test_embedding_module_embeds_as_the_embed_job_does(tiny):
    """The module on classify's input (a 32 px shard row resized to 24 px, transforms.resize) gives the embed job's
    embedding of the same rows (ShardDataset, prepare_batch, the network, L2 normalisation), to 1e-6."""
    module = EmbeddingModule.from_checkpoint(tiny.embed_pt)
    assert (module.image_size, module.embedding_size, module.color_mode, module.normalize) == (
        24,
        16,
        "rgby",
        "imagenet",
    )
    with torch.no_grad():
        got = module(torch.as_tensor(model_input(tiny.field_rows, EMB_SIZE))).numpy()
    expected = np.concatenate([embed_job(tiny.state, f) for f in tiny.fields])
    assert got.shape == (4, DIM) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-6
    assert np.abs(np.linalg.norm(got, axis=1) - 1).max() <= 1e-6
    # The normalisation matters: per_image would not match by chance.
    other = EmbeddingModule(module.net, EMB_SIZE, DIM, "rgby", "per_image")
    with torch.no_grad():
        assert np.abs(other(torch.as_tensor(model_input(tiny.field_rows, EMB_SIZE))).numpy() - expected).max() > 1e-3


def test_the_packaged_embedding_graph_computes_the_module_for_any_batch_size(tiny):
    """embedding.onnx: input rgby uint8 (batch, 4, 24, 24), output `embedding` (batch, 16), weights inside;
    onnxruntime gives the PyTorch module's embedding within 1e-4 for 1 and 4 rows."""
    path = tiny.with_transfer / "embedding.onnx"
    graph = onnx.load(str(path))
    (inp,), (out,) = graph.graph.input, graph.graph.output
    assert inp.name == "rgby" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1:] == [4, EMB_SIZE, EMB_SIZE]
    assert inp.type.tensor_type.shape.dim[0].dim_param and out.name == "embedding"
    x = model_input(tiny.field_rows, EMB_SIZE)
    for n in (1, 4):
        assert check_onnx(path, tiny.transfer.module, x[:n]) <= 1e-4


# --- the package ------------------------------------------------------------------------------------------


def test_a_package_with_transfer_is_written_and_read_back(tiny):
    """The three files are in the manifest (and the bioimage.io attachments), verify, and read back as written:
    the references are the external train fields of embeddings.h5 (not k0/k1, not the test field x0), in file
    order; transfer.json has tau, the sizes, the retrieval accuracy. Folder and zip read alike."""
    for path in (tiny.with_transfer, tiny.zip):
        package = Package(path)
        package.verify()
        assert {"embedding.onnx", "references.npz", "transfer.json"} <= set(package.files)
        t = package.transfer()
        assert t.ids.tolist() == ["r0", "r1", "r2", "r3"]
        np.testing.assert_array_equal(t.labels, np.stack([labels_of(c) for c in REF_LABELS.values()]))
        assert t.labels.dtype == np.uint8 and t.embeddings.dtype == np.float32
        np.testing.assert_array_equal(t.embeddings, tiny.ref_emb)
        assert (t.tau, t.image_size, t.embedding_size) == (tiny.tau, EMB_SIZE, DIM)
    assert Package(tiny.with_transfer).transfer().onnx == str(tiny.with_transfer / "embedding.onnx")
    assert Package(tiny.zip).transfer().onnx == (tiny.with_transfer / "embedding.onnx").read_bytes()
    described = json.loads((tiny.with_transfer / "transfer.json").read_text())
    assert {k: described[k] for k in ("tau", "image_size", "embedding_size", "retrieval_accuracy", "references")} == {
        "tau": tiny.tau,
        "image_size": EMB_SIZE,
        "embedding_size": DIM,
        "retrieval_accuracy": 0.75,
        "references": 4,
    }
    assert described["resize"] == {"shard_size": SHARD, "size": EMB_SIZE, "interpolation": "cv2.INTER_AREA"}
    readme = (tiny.with_transfer / "README.md").read_text()
    assert "## Label transfer" in readme and "neighbour_id, similarity and transferred" in readme
    rdf = yaml.safe_load((tiny.with_transfer / "rdf.yaml").read_text())
    assert {"embedding.onnx", "references.npz", "transfer.json"} <= {a["source"] for a in rdf["attachments"]}


def test_a_package_without_transfer_is_as_before(tiny):
    package = Package(tiny.without)
    assert package.transfer() is None
    assert sorted(package.files) == sorted(
        ["ensemble.onnx", "thresholds.json", "classes.json", "preprocessing.json", "README.md"]
        + ["rdf.yaml", "test_input.npy", "test_output.npy", "cover.png"]
    )
    readme = (tiny.without / "README.md").read_text()
    assert "Label transfer" not in readme
    # metrics.json from before the stamps (METRICS has none): the export job's own environment alone.
    torch_version = versions.environment_versions()["packages"]["torch"]
    assert "\n## Software versions\n" in readme and "| package | export |" in readme
    assert f"| torch | {torch_version} |" in readme


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_damaged_references_file_is_refused_naming_it(tiny, tmp_path):
    """A changed byte: refused against the manifest, by Package.transfer and by classify before predicting.
    Arrays of the wrong kind (manifest rewritten to match): refused naming the file and the array."""
    folder = Path(shutil.copytree(tiny.with_transfer, tmp_path / "pkg"))
    flip_byte(folder / "references.npz")
    message = "references.npz does not match manifest.json"
    with pytest.raises(PackageError, match=re.escape(message)):
        Package(folder).transfer()
    out = tmp_path / "predictions.csv"
    with pytest.raises(PackageError, match=re.escape(message)):
        run_classify(tiny.fields, folder, out, threads=1, batch_size=2)
    assert not out.exists()

    with np.load(tiny.with_transfer / "references.npz") as z:
        arrays = dict(z)
    with (folder / "references.npz").open("wb") as f:
        np.savez(f, **{**arrays, "labels": arrays["labels"].astype(np.float32)})
    write_manifest(folder)
    with pytest.raises(PackageError, match=r"references\.npz: labels must be 0/1 uint8 \(4, 28\), got float32"):
        Package(folder).transfer()
    (folder / "references.npz").write_bytes(b"not a zip")
    write_manifest(folder)
    with pytest.raises(PackageError, match=r"references\.npz cannot be read as a numpy \.npz file"):
        Package(folder).transfer()


def test_a_manifest_with_transfer_json_but_no_references_is_refused(tiny, tmp_path):
    folder = Path(shutil.copytree(tiny.with_transfer, tmp_path / "pkg"))
    (folder / "references.npz").unlink()
    write_manifest(folder)
    with pytest.raises(PackageError, match=r"lists transfer\.json but not references\.npz"):
        Package(folder).transfer()


def test_export_refuses_an_embedding_network_that_is_not_one(tiny, tmp_path):
    """embed.pt of another format, or embeddings of another size than the network makes: named, with the rerun."""
    state = dict(tiny.state)
    state[h5n.FORMAT] = 1
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(ExportError, match=re.escape(f"{tmp_path / 'old.pt'}: format 1, expected 2")):
        EmbeddingModule.from_checkpoint(tmp_path / "old.pt")
    state = {**tiny.state, "settings": {**tiny.state["settings"], "embedding_size": 8}}
    torch.save(state, tmp_path / "eight.pt")
    with pytest.raises(ExportError, match=r"eight\.pt: the weights do not fit a resnet18 network"):
        TransferExport.load(tmp_path / "eight.pt", tiny.embeddings_h5, tiny.metrics_json)
    (tmp_path / "m.json").write_text(json.dumps({"transfer": {"tau": 2.0}}))
    with pytest.raises(ExportError, match=r"m\.json: transfer\.tau 2\.0 is neither null nor a similarity"):
        TransferExport.load(tiny.embed_pt, tiny.embeddings_h5, tmp_path / "m.json")


# --- classify ---------------------------------------------------------------------------------------------


def expected_labels(probs: np.ndarray) -> np.ndarray:
    """The package's thresholds by hand: p > 0.5, else the argmax (at_least_one)."""
    out = probs > 0.5
    for row, p in zip(out, probs):
        if not row.any():
            row[np.argmax(p)] = True
    return out


def as_predicted(labels: np.ndarray) -> list[str]:
    return [" ".join(map(str, np.flatnonzero(row))) for row in labels]


def test_classify_transfers_the_labels_of_a_field_identical_to_a_reference(tiny, tmp_path, caplog):
    """f0 is reference r2's row: its nearest reference is r2 at similarity 1 >= tau, so it takes r2's labels
    (3 7 11); f1-f3 keep the ensemble's labels. The neighbour and similarity are the brute-force cosine argmax
    and max of the PyTorch embeddings; the probability columns stay the ensemble's; any batch size, folder or
    zip give the same table."""
    caplog.set_level(logging.INFO, logger="hpaflow")
    out = tmp_path / "predictions.csv"
    table = run_classify(tiny.fields, tiny.with_transfer, out, threads=1, batch_size=3, transfer=True)
    assert list(table.columns) == [*COLUMNS, "neighbour_id", "similarity", "transferred"]
    assert list(TRANSFER_COLUMNS) == ["neighbour_id", "similarity", "transferred"]
    assert table.Id.tolist() == tiny.field_ids

    with torch.no_grad():
        probs = tiny.ensemble(torch.as_tensor(np.ascontiguousarray(tiny.field_rows.transpose(0, 3, 1, 2)))).numpy()
        emb = tiny.transfer.module(torch.as_tensor(model_input(tiny.field_rows, EMB_SIZE))).numpy()
    sim = emb.astype(np.float64) @ tiny.ref_emb.T.astype(np.float64)
    assert np.abs(table[list(CLASS_NAMES)].to_numpy() - probs).max() <= 1e-5
    assert table.neighbour_id.tolist() == [["r0", "r1", "r2", "r3"][k] for k in sim.argmax(1)]
    assert table.neighbour_id[0] == "r2" and table.similarity[0] == pytest.approx(1, abs=1e-5)
    assert np.abs(table.similarity.to_numpy() - sim.max(1)).max() <= 1e-5
    assert table.transferred.tolist() == [True, False, False, False]
    ensemble = as_predicted(expected_labels(probs))
    assert table.Predicted.tolist() == ["3 7 11", *ensemble[1:]]
    assert ensemble[0] != "3 7 11"  # the transfer changed f0's labels
    assert table.Labels[0] == "; ".join(CLASS_NAMES[k] for k in (3, 7, 11))

    back = pd.read_csv(out, dtype={"Id": str, "Predicted": str, "Labels": str, "neighbour_id": str})
    assert back.transferred.tolist() == [True, False, False, False]
    assert back.Predicted.fillna("").tolist() == table.Predicted.tolist()
    assert "label transfer: 1 of 4 fields took their nearest reference's labels" in caplog.text
    again = run_classify(tiny.fields, tiny.zip, tmp_path / "zip.csv", threads=1, batch_size=1, transfer=True)
    pd.testing.assert_frame_equal(again, table, atol=1e-6)


def test_tau_null_transfers_nothing_but_names_the_neighbours(tiny, tmp_path):
    """A package whose tau is null (transfer never raised the F1): every field keeps the ensemble's labels."""
    folder = Path(shutil.copytree(tiny.with_transfer, tmp_path / "pkg"))
    described = json.loads((folder / "transfer.json").read_text())
    (folder / "transfer.json").write_text(json.dumps({**described, "tau": None}))
    write_manifest(folder)
    table = run_classify(tiny.fields, folder, tmp_path / "p.csv", threads=1, batch_size=4, transfer=True)
    plain = run_classify(tiny.fields, tiny.without, tmp_path / "q.csv", threads=1, batch_size=4, transfer=True)
    assert table.transferred.tolist() == [False] * 4 and table.neighbour_id[0] == "r2"
    pd.testing.assert_frame_equal(table[COLUMNS], plain)


def test_without_transfer_the_predictions_are_todays(tiny, tmp_path, caplog):
    """classify.transfer false with a package that has transfer, or true with a package without: the ensemble's
    table alone, the same in both (and the csv the same bytes), with a log line saying why."""
    caplog.set_level(logging.INFO, logger="hpaflow")
    off = run_classify(tiny.fields, tiny.with_transfer, tmp_path / "off.csv", threads=1, batch_size=2, transfer=False)
    assert "classify.transfer is false" in caplog.text
    plain = run_classify(tiny.fields, tiny.without, tmp_path / "plain.csv", threads=1, batch_size=2, transfer=True)
    assert "holds no label transfer" in caplog.text
    assert list(off.columns) == COLUMNS
    pd.testing.assert_frame_equal(off, plain)
    assert (tmp_path / "off.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
    with torch.no_grad():
        probs = tiny.ensemble(torch.as_tensor(np.ascontiguousarray(tiny.field_rows.transpose(0, 3, 1, 2)))).numpy()
    assert off.Predicted.tolist() == as_predicted(expected_labels(probs))
