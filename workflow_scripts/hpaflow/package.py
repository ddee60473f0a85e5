"""The exported classifier package on disk: its manifest of checksums, and reading it back (no torch).

A package is the folder `snakemake export` writes (results/export/hpa_classifier/) or its zip:
  ensemble.onnx       uint8 RGBY (N, 4, S, S) -> probabilities (N, 28)
  thresholds.json     {"method", "at_least_one", "thresholds": [28 floats]}
  classes.json        {"0": "Nucleoplasm", ...}
  preprocessing.json  channel files, uint16 rule, and the two resizes: sources -> `resize.shard_size` px as the
                      shard step does it, then each row -> `resize.size` = S px (the graph's input) as predict does
  README.md, and the bioimage.io model description: rdf.yaml, test_input.npy, test_output.npy, cover.png
  with label transfer (optional; Package.transfer):
  embedding.onnx      uint8 RGBY (N, 4, M, M) -> unit embeddings (N, D)
  references.npz      the labelled fields a field can take labels from: ids (R,) str, labels uint8 (R, 28),
                      embeddings float32 (R, D)
  transfer.json       {"tau": similarity or null (never), "image_size": M, "embedding_size": D, "references": R, ...}
  manifest.json       {"format": FORMAT, "files": {name: {"sha256", "bytes"}}} of every file above
`snakemake classify` checks every file against the manifest before it predicts anything, so a
package damaged in a copy (or edited by hand) is refused with the file named.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from .files import atomic_path

MANIFEST = "manifest.json"
FORMAT = "hpa_classifier/1"
REQUIRED = ("ensemble.onnx", "thresholds.json", "classes.json", "preprocessing.json")
EMBEDDING_ONNX, REFERENCES, TRANSFER_JSON = "embedding.onnx", "references.npz", "transfer.json"
TRANSFER_FILES = (EMBEDDING_ONNX, REFERENCES, TRANSFER_JSON)
CHUNK = 1 << 20
# What reading a damaged zip member raises: a failed CRC, a broken deflate stream, a cut file.
DAMAGED = (zipfile.BadZipFile, zlib.error, OSError, EOFError)


class PackageError(ValueError):
    """A package that is missing, incomplete, or whose files do not match its manifest."""


def sha256_of(f: IO[bytes]) -> tuple[str, int]:
    """sha256 and size of a binary stream, read in 1 MiB chunks (an ensemble's weights reach GBs)."""
    h, n = hashlib.sha256(), 0
    while chunk := f.read(CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def write_manifest(folder: str | Path) -> dict:
    """manifest.json over every file in `folder` (hidden files, e.g. Snakemake's marker, left out)."""
    folder = Path(folder)
    files = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name != MANIFEST and not p.name.startswith("."):
            with p.open("rb") as f:
                sha, n = sha256_of(f)
            files[p.name] = {"sha256": sha, "bytes": n}
    manifest = {"format": FORMAT, "files": files}
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


@dataclass(frozen=True)
class Transfer:
    """A package's label transfer, as classify uses it."""

    onnx: str | bytes  # embedding.onnx, what onnxruntime opens (Package.onnx_source)
    tau: float | None  # a field takes its nearest reference's labels at a similarity >= tau; None: never
    image_size: int  # embedding.onnx's input side
    embedding_size: int
    ids: np.ndarray  # str (R,): the references
    labels: np.ndarray  # uint8 (R, C)
    embeddings: np.ndarray  # float32 (R, D), unit rows


def positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


class Package:
    """An exported package, folder or zip. Opening it reads the manifest; `verify` checks every file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise PackageError(f"package {self.path}: does not exist")
        self._zip = None
        if self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile:
                raise PackageError(f"package {self.path}: not a folder or a zip file") from None
        if not self.has(MANIFEST):
            inner = [n for n in self._zip.namelist() if n.endswith("/" + MANIFEST)] if self._zip else []
            hint = f" (the zip holds {inner[0]}: zip the package's files, not its folder)" if inner else ""
            raise PackageError(f"package {self.path}: no {MANIFEST}; not a package written by `snakemake export`{hint}")
        try:
            manifest = json.loads(self.read(MANIFEST))
        except json.JSONDecodeError as e:
            raise PackageError(f"package {self.path}: {MANIFEST} is not valid JSON ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else None
            raise PackageError(f"package {self.path}: {MANIFEST} format is {got!r}, expected {FORMAT!r}")
        files = manifest.get("files")
        if not isinstance(files, dict) or not all(
            isinstance(v, dict) and {"sha256", "bytes"} <= set(v) for v in files.values()
        ):
            raise PackageError(f"package {self.path}: {MANIFEST} has no `files` mapping of name -> sha256 and bytes")
        self.files: dict[str, dict] = files
        if missing := [n for n in REQUIRED if n not in self.files]:
            raise PackageError(f"package {self.path}: {MANIFEST} does not list {', '.join(missing)}")

    def has(self, name: str) -> bool:
        return name in self._zip.namelist() if self._zip else (self.path / name).is_file()

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        """A file of the package, read as a stream; a missing or damaged file is a PackageError naming it."""
        if not self.has(name):
            raise PackageError(f"package {self.path}: {name} is missing")
        try:
            with self._zip.open(name) if self._zip else (self.path / name).open("rb") as f:
                yield f
        except DAMAGED as e:
            raise PackageError(f"package {self.path}: {name} cannot be read ({e})") from None

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def verify(self, names: list[str] | None = None) -> None:
        """Every file (or `names`) against the manifest's sha256 and size; raises PackageError naming the file."""
        for name in names or list(self.files):
            want = self.files[name]
            with self.open(name) as f:
                sha, n = sha256_of(f)
            if (sha, n) != (want["sha256"], want["bytes"]):
                raise PackageError(
                    f"package {self.path}: {name} does not match {MANIFEST} (sha256 {sha[:12]}..., {n} bytes; "
                    f"listed {want['sha256'][:12]}..., {want['bytes']} bytes): changed or damaged since export"
                )

    def json(self, name: str) -> dict:
        """A JSON file of the package, checked against the manifest first."""
        self.verify([name])
        return json.loads(self.read(name))

    def sizes(self) -> tuple[int, int]:
        """(shard size, input size): fields are sharded at the first (as the training data were) and each row
        resized to the second (as predict resized them). A package without both is from an older export."""
        resize = self.json("preprocessing.json").get("resize")
        got = [resize.get(k) if isinstance(resize, dict) else None for k in ("shard_size", "size")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in got):
            raise PackageError(
                f"package {self.path}: preprocessing.json gives no resize.shard_size and resize.size (the size fields "
                "are sharded at, and the model's input size): written by an older export; re-export the package "
                "(snakemake export) with this workflow"
            )
        return got[0], got[1]

    @property
    def image_size(self) -> int:
        """The graph's input side."""
        return self.sizes()[1]

    @property
    def shard_size(self) -> int:
        """The side the fields' channel files are resized to by the shard code, before the graph's resize."""
        return self.sizes()[0]

    def classes(self) -> list[str]:
        names = self.json("classes.json")
        return [names[str(i)] for i in range(len(names))]

    def thresholds(self) -> tuple[np.ndarray, bool]:
        """Per-class thresholds (one per class of classes.json) and the at_least_one rule."""
        t = self.json("thresholds.json")
        values = np.asarray(t["thresholds"], np.float64)
        if values.shape != (len(self.classes()),):
            raise PackageError(
                f"package {self.path}: thresholds.json holds {values.size} thresholds for "
                f"{len(self.classes())} classes (classes.json)"
            )
        return values, bool(t["at_least_one"])

    def onnx_source(self, name: str = "ensemble.onnx") -> str | bytes:
        """What onnxruntime opens: the file's path in a folder, its bytes in a zip."""
        return str(self.path / name) if self._zip is None else self.read(name)

    def transfer(self) -> Transfer | None:
        """The package's label transfer, its files checked against the manifest; None when it has none
        (no transfer.json: exported without transfer.enabled)."""
        if TRANSFER_JSON not in self.files:
            return None
        if missing := [n for n in TRANSFER_FILES if n not in self.files]:
            raise PackageError(
                f"package {self.path}: {MANIFEST} lists {TRANSFER_JSON} but not {', '.join(missing)}: "
                "incomplete label transfer; re-export the package"
            )
        self.verify(list(TRANSFER_FILES))
        t = json.loads(self.read(TRANSFER_JSON))
        tau = t.get("tau") if isinstance(t, dict) else None
        bad_tau = tau is not None and (isinstance(tau, bool) or not isinstance(tau, int | float) or not -1 <= tau <= 1)
        sizes = isinstance(t, dict) and all(positive_int(t.get(k)) for k in ("image_size", "embedding_size"))
        if not isinstance(t, dict) or bad_tau or not sizes:
            raise PackageError(
                f"package {self.path}: {TRANSFER_JSON} needs tau (a similarity in [-1, 1] or null) and positive "
                f"integers image_size and embedding_size; got {t!r:.200}"
            )
        ids, labels, embeddings = self._references(t["embedding_size"])
        return Transfer(
            self.onnx_source(EMBEDDING_ONNX),
            None if tau is None else float(tau),
            t["image_size"],
            t["embedding_size"],
            ids,
            labels,
            embeddings,
        )

    def _references(self, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, labels, embeddings) of references.npz, checked: one row per id, a label column per class,
        `dim` finite values per embedding."""
        where = f"package {self.path}: {REFERENCES}"
        try:
            with np.load(io.BytesIO(self.read(REFERENCES)), allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("ids", "labels", "embeddings")}
        except KeyError as e:
            raise PackageError(f"{where} has no array {e}") from None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise PackageError(f"{where} cannot be read as a numpy .npz file ({e})") from None
        ids, labels, emb = arrays["ids"], arrays["labels"], arrays["embeddings"]
        r, c = len(ids), len(self.classes())
        if ids.ndim != 1 or ids.dtype.kind != "U" or r == 0:
            raise PackageError(f"{where}: ids must be a non-empty 1-d array of strings, got {ids.dtype} {ids.shape}")
        if labels.dtype != np.uint8 or labels.shape != (r, c) or labels.max() > 1:
            raise PackageError(f"{where}: labels must be 0/1 uint8 ({r}, {c}), got {labels.dtype} {labels.shape}")
        if emb.dtype != np.float32 or emb.shape != (r, dim) or not np.isfinite(emb).all():
            raise PackageError(f"{where}: embeddings must be finite float32 ({r}, {dim}), got {emb.dtype} {emb.shape}")
        return ids, labels, emb
