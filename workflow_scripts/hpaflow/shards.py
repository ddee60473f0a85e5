"""HDF5 shards of uint8 RGBY images: writing and reading (planning: `layout`).

A shard `results/shards/{dataset}/{index}.h5` holds, for rows i = 0..N-1:
  images      uint8 (N, H, W, 4), RGBY, one row per chunk (random access reads one chunk)
  ids         str (N,)         the source image's Id (repeated for its tiles)
  tile_origin int32 (N, 2)     (y, x) of the row's top-left corner in the resized image
  hashes      uint64 (N, 4)    pHash of each plane of the resized image (hashing.phash; a tile
                               carries its image's), for the near-duplicate search
  row_digests uint64 (N,)       the first 8 bytes of each row's sha256 (content_fingerprint: what
                               a model's checkpoint follows, whatever the shard boundaries or codec)
  labels      uint8 (N, 28)    train datasets only
and attributes format_version (h5names.SHARD_FORMAT), channel_order, image_size, tile_size, tiling,
source_format, dataset, role, software_versions (the writing job's environment, hpaflow.versions).
Without tiling, every row is one image and tile_origin is (0, 0).

Codecs (`hdf5_compression`, `COMPRESSIONS`): the images chunks are plain HDF5 filters. lzf and gzip
are built into h5py; the blosc, blosc2 and bitshuffle filters come from hdf5plugin, which this
module imports: importing it registers them with HDF5, so every reader of shards imports this
module (or hdf5plugin) before h5py reads a row. Planning (rules/common.smk, in the launcher env)
must not import this module.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import h5py
import hdf5plugin  # registers the blosc, blosc2 and bitshuffle filters with HDF5: shards read anywhere
import numpy as np

from . import h5names as h5n
from . import versions
from .duplicates import Fields
from .files import atomic_path
from .io import ImageError, Uint16Scaling, read_rgby
from .labels import NUM_CLASSES
from .progress import Progress

if TYPE_CHECKING:
    from threadpoolctl import ThreadpoolController

log = logging.getLogger("hpaflow")

# One blosc2 block per chunk (64 MiB: rows up to 4096 px). The plugin's default blocks (256 KiB, or
# what c-blosc2's tuner picks for the level) are n-dimensional (b2nd) in chunks of rank > 1, and
# stitching them back (copy4dim) makes reads ~4x slower; a whole-chunk block decodes in one piece.
BLOSC2_BLOCK_BYTES = 1 << 26


def blosc2_whole_chunk(cname: str, clevel: int) -> dict:
    """hdf5plugin.Blosc2 without shuffle (on 1-byte items it changes nothing, yet c-blosc2 runs it as
    a byte loop that halves reads) and with one block per chunk (filter value 1: block bytes)."""
    opts = list(hdf5plugin.Blosc2(cname=cname, clevel=clevel, filters=hdf5plugin.Blosc2.NOFILTER).filter_options)
    opts[1] = BLOSC2_BLOCK_BYTES
    return {"compression": hdf5plugin.Blosc2.filter_id, "compression_opts": tuple(opts)}


# hdf5_compression -> create_dataset kwargs of the images (the schema's enum is these keys). Measured
# on a real HPAv18 field at 512 px (benchmarks/README.md, "Issue 23"): bytes of raw, random single-row
# reads per core. none 1.0, 4,200-5,600 img/s; blosc_lz4 and blosc2_lz4 0.55, 1,300-2,000; bitshuffle_lz4
# 0.51, 430-650; blosc2_zstd 0.45, 470-570; lzf 0.55, ~190; gzip 0.46, ~130. Levels (reads do not change
# with them): gzip 4 (6 saves 1% at 0.75x the writes); blosc lz4 9 (the fewest bytes; writes still 15x the
# shard job's decoding); blosc2 lz4 5; blosc2 zstd 1 (3 saves nothing, 7 writes 10x slower). No byte
# shuffle: on uint8 rows it is the identity.
COMPRESSIONS: dict[str, Mapping] = {
    "none": {},
    "lzf": {"compression": "lzf"},
    "gzip": {"compression": "gzip", "compression_opts": 4},
    "blosc_lz4": hdf5plugin.Blosc(cname="lz4", clevel=9, shuffle=hdf5plugin.Blosc.NOSHUFFLE),
    "blosc2_lz4": blosc2_whole_chunk("lz4", 5),
    "blosc2_zstd": blosc2_whole_chunk("zstd", 1),
    "bitshuffle_lz4": hdf5plugin.Bitshuffle(cname="lz4"),  # bit planes of 8 bytes: the lz4 codec that packs most
}
MAX_ERRORS_SHOWN = 20
WRITE_BLOCK = 16  # images per HDF5 write call
PREFETCH_PER_THREAD = 2  # Ids in flight per thread of a shard job: one being worked on, one waiting


@dataclass(frozen=True)
class ShardSpec:
    """What a shard job needs to know about its dataset and the image geometry."""

    dataset: str
    fmt: str
    images_dir: str
    role: str
    image_size: int
    tiling: str = "none"
    tile_size: int | None = None
    compression: str = "none"
    bits: int = 16  # significant bits of uint16 sources
    bits_key: str = "bits"  # the config key that sets `bits` (`datasets[1].bits`, `classify.bits`): warnings name it
    reduced_decode: bool = False  # jpg: libjpeg's scaled decode before the resize (datasets[].reduced_decode)

    @property
    def row_size(self) -> int:
        return self.tile_size if self.tiling == "grid" else self.image_size

    @property
    def tiles_per_image(self) -> int:
        return (self.image_size // self.row_size) ** 2


def cut_tiles(rgby: np.ndarray, spec: ShardSpec) -> tuple[np.ndarray, np.ndarray]:
    """An image at image_size -> its grid of tiles (T, s, s, 4) and their origins (T, 2)."""
    s = spec.row_size
    n = spec.image_size // s
    origins = np.array([(y * s, x * s) for y in range(n) for x in range(n)], np.int32)
    tiles = rgby.reshape(n, s, n, s, 4).transpose(0, 2, 1, 3, 4).reshape(n * n, s, s, 4)
    return tiles, origins


@dataclass
class _Prepared:
    """One Id as a worker leaves it: its rows and what they carry, or why it failed; and what it saw of
    the uint16 data and the source side, merged in Id order by the writer."""

    scaling: Uint16Scaling
    sources: list[int]
    error: str | None = None
    tiles: np.ndarray | None = None  # (T, s, s, 4) C-contiguous: each row is one chunk as it lies
    origins: np.ndarray | None = None
    hashes: np.ndarray | None = None
    digests: list[int] | None = None


def _prepare(spec: ShardSpec, image_id: str, check_only: threading.Event) -> _Prepared:
    """Decode, check, resize, hash and digest one Id (a worker's share; no HDF5 here)."""
    from .hashing import phash_rgby  # scipy and Pillow: jobs that write shards need them, readers do not

    p = _Prepared(Uint16Scaling(spec.bits, spec.bits_key), [])
    try:
        rgby = read_rgby(
            spec.images_dir, image_id, spec.fmt, spec.image_size, p.scaling, p.sources, spec.reduced_decode
        )
    except ImageError as e:
        p.error = str(e)
        return p
    if not check_only.is_set():  # once an Id failed, only checking goes on: the file is dropped
        tiles, p.origins = cut_tiles(rgby, spec)
        p.tiles = np.ascontiguousarray(tiles)
        p.hashes = phash_rgby(rgby)
        p.digests = [row_digest(t) for t in p.tiles]
    return p


def _prepared(spec: ShardSpec, ids: list[str], threads: int, check_only: threading.Event) -> Iterator[_Prepared]:
    """Each Id prepared, in order: inline with one thread, else on a pool of `threads` with at most
    PREFETCH_PER_THREAD Ids per thread in flight (memory: a few images each)."""
    if threads <= 1:
        for image_id in ids:
            yield _prepare(spec, image_id, check_only)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="shard") as pool:
        todo = iter(ids)
        pending = deque(pool.submit(_prepare, spec, i, check_only) for i in islice(todo, PREFETCH_PER_THREAD * threads))
        try:
            while pending:
                done = pending.popleft().result()
                for image_id in islice(todo, 1):
                    pending.append(pool.submit(_prepare, spec, image_id, check_only))
                yield done
        finally:  # an error (or the writer's): nothing more starts; the running ones end with the pool
            for f in pending:
                f.cancel()


@functools.cache
def _blas_controller() -> ThreadpoolController | None:
    """threadpoolctl's view of the loaded BLAS libraries (scanning them costs ~3 ms: once), or None where
    threadpoolctl is missing (the classify env): there BLAS runs as Snakemake's OPENBLAS_NUM_THREADS (the
    job's threads) says."""
    try:
        from threadpoolctl import ThreadpoolController  # scikit-learn's: in the data env
    except ImportError:
        return None
    return ThreadpoolController()


@contextmanager
def one_thread_each() -> Iterator[None]:
    """cv2 and BLAS on one thread each while it lasts (restored after): a job's parallelism is its pool
    of `threads` images, and their own pools on top would oversubscribe the job's cores."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    controller = _blas_controller()
    try:
        with controller.limit(limits=1, user_api="blas") if controller else nullcontext():
            yield
    finally:
        cv2.setNumThreads(previous)


def write_shard(
    out: str | Path,
    spec: ShardSpec,
    ids: list[str],
    labels: np.ndarray | None,
    shard_index: int = 0,
    threads: int = 1,
) -> None:
    """Decode, check and resize every Id's 4 channels and write one shard atomically.

    Every Id is checked; if any fails, the job raises one error listing them all and
    no shard file is left behind. With `threads` > 1, Ids are decoded, resized, hashed and digested
    on that many threads at once, and written in order by this one: the file's content is the same
    for any `threads`.
    """
    if spec.role == "train" and labels is None:
        raise ValueError(f"dataset {spec.dataset}: train shards need labels")
    n_rows = len(ids) * spec.tiles_per_image
    s = spec.row_size
    errors: list[str] = []
    progress = Progress(len(ids), f"shard {spec.dataset}/{shard_index}", "images", log=log)
    # Uncompressed rows go to HDF5 as raw chunks (one per row): half the cost of a dataset write.
    direct = not COMPRESSIONS[spec.compression]
    check_only = threading.Event()
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as h5:
            images = h5.create_dataset(
                h5n.IMAGES, (n_rows, s, s, 4), np.uint8, chunks=(1, s, s, 4), **COMPRESSIONS[spec.compression]
            )
            origin = np.zeros((n_rows, 2), np.int32)
            hashes = np.zeros((n_rows, 4), np.uint64)
            row_digests = np.zeros(n_rows, np.uint64)
            # Compressed rows go in blocks: one write call per image costs more than the copy.
            block = None if direct else np.empty((WRITE_BLOCK * spec.tiles_per_image, s, s, 4), np.uint8)
            row = filled = 0
            scaling = Uint16Scaling(spec.bits, spec.bits_key)
            sources: list[int] = []  # side of each source field, to count those enlarged over 2x
            with one_thread_each(), closing(_prepared(spec, ids, threads, check_only)) as prepared:
                for p in prepared:
                    scaling.merge(p.scaling)
                    sources += p.sources
                    if p.error is not None:
                        errors.append(p.error)
                        check_only.set()
                    elif not errors:
                        n = len(p.tiles)
                        origin[row : row + n] = p.origins
                        hashes[row : row + n] = p.hashes
                        row_digests[row : row + n] = p.digests
                        if block is None:
                            for t, tile in enumerate(p.tiles):
                                images.id.write_direct_chunk((row + t, 0, 0, 0), tile)
                        else:
                            block[filled : filled + n] = p.tiles
                            filled += n
                            if filled == len(block):
                                images[row + n - filled : row + n] = block
                                filled = 0
                    row += spec.tiles_per_image
                    progress.update()
            if filled and not errors:
                images[row - filled : row] = block[:filled]
            if errors:
                shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
                more = len(errors) - MAX_ERRORS_SHOWN
                tail = f"\n  ... and {more} more" if more > 0 else ""
                raise ImageError(
                    f"dataset {spec.dataset}, shard {shard_index}: {len(errors)} of {len(ids)} "
                    f"image(s) failed the check; no shard written:\n  {shown}{tail}"
                )
            if warning := scaling.warning():
                log.warning("dataset %s, shard %d: %s", spec.dataset, shard_index, warning)
            if warning := small_fields_warning(sources, spec.image_size):
                log.warning("dataset %s, shard %d: %s", spec.dataset, shard_index, warning)
            repeat = spec.tiles_per_image
            row_ids = np.repeat(np.array(ids, dtype=object), repeat)
            row_labels = None if labels is None else np.repeat(labels.astype(np.uint8), repeat, axis=0)
            h5.create_dataset(h5n.IDS, data=row_ids, dtype=h5py.string_dtype())
            h5.create_dataset(h5n.TILE_ORIGIN, data=origin)
            h5.create_dataset(h5n.HASHES, data=hashes)
            h5.create_dataset(h5n.ROW_DIGESTS, data=row_digests)
            if row_labels is not None:
                h5.create_dataset(h5n.LABELS, data=row_labels)
            h5.attrs.update(
                {
                    h5n.FORMAT: h5n.SHARD_FORMAT,
                    "channel_order": "RGBY",
                    "image_size": spec.image_size,
                    "tile_size": s,
                    "tiling": spec.tiling,
                    "source_format": spec.fmt,
                    "dataset": spec.dataset,
                    "role": spec.role,
                    "shard_index": shard_index,
                    "num_classes": NUM_CLASSES,
                }
            )
            versions.stamp(h5.attrs)  # this job's environment: what decoded and resized the images


def small_fields_warning(sources: list[int], image_size: int) -> str | None:
    """Fields whose source is under half the shard's image_size are enlarged over 2x: blurred, and
    unlike what the model saw in training (HPA fields are 512-2048 px)."""
    small = [s for s in sources if 2 * s < image_size]
    if not small:
        return None
    return (
        f"{len(small)} of {len(sources)} fields are smaller than half of image_size {image_size} px "
        f"(smallest {min(small)} px), enlarged over 2x: are they crops or thumbnails?"
    )


def row_digest(row: np.ndarray) -> int:
    """The first 8 bytes of a row's sha256: with its Id, what a model's fingerprint follows (not the
    shard it sits in, so that shard_size and hdf5_compression rerun no model)."""
    return int.from_bytes(hashlib.sha256(np.ascontiguousarray(row).data).digest()[:8], "little")


def check_format(path: str | Path, h5: h5py.File) -> None:
    """A shard of this workflow's format; else the file and what to rerun."""
    h5n.check_format(path, "shard", h5.attrs.get(h5n.FORMAT))


def write_index(out: str | Path, shards: list[str]) -> dict:
    """results/shards/{dataset}/index.json: the dataset's shard files in order, with their rows, after
    checking each one's format."""
    rows = []
    for f in shards:
        with h5py.File(f, "r") as h5:
            check_format(f, h5)
            rows.append(int(h5[h5n.IDS].shape[0]))
    index = {h5n.FORMAT: h5n.SHARD_FORMAT, "shards": [str(f) for f in shards], "rows": rows}
    with atomic_path(out) as tmp:
        Path(tmp).write_text(json.dumps(index, indent=1) + "\n")
    return index


def content_fingerprint(files: list[str]) -> str:
    """A sha256 of every row's Id, tile origin and row digest in Id order: the same for the same images
    whatever the shard boundaries or codec."""
    ids, origins, digests = [], [], []
    for f in files:
        with h5py.File(f, "r") as h5:
            check_format(f, h5)
            ids.append(h5[h5n.IDS].asstr()[...])
            origins.append(h5[h5n.TILE_ORIGIN][...])
            digests.append(h5[h5n.ROW_DIGESTS][...])
    if not files:
        return hashlib.sha256().hexdigest()
    ids_, origin, dig = np.concatenate(ids), np.concatenate(origins), np.concatenate(digests)
    order = np.lexsort((origin[:, 1], origin[:, 0], ids_))
    h = hashlib.sha256("\0".join(ids_[order]).encode())
    h.update(np.ascontiguousarray(origin[order], np.int32).data)
    h.update(np.ascontiguousarray(dig[order], np.uint64).data)
    return h.hexdigest()


def shard_hashes(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Ids and (N, 4) pHashes of a shard's rows, as stored."""
    with h5py.File(path, "r") as h5:
        check_format(path, h5)
        return h5[h5n.IDS].asstr()[...], h5[h5n.HASHES][...]


def read_fields(files: list[str]) -> Fields:
    """One row per field of view of the shards (a tiled image once): Id, dataset, train or test,
    pHashes and labels, for the near-duplicate search."""
    parts = []
    for f in files:
        ids, hashes = shard_hashes(f)
        with h5py.File(f, "r") as h5:
            labels = h5[h5n.LABELS][...] if h5n.LABELS in h5 else np.zeros((len(ids), NUM_CLASSES), np.uint8)
            dataset, train = str(h5.attrs["dataset"]), h5.attrs["role"] == "train"
        first = np.unique(ids, return_index=True)[1]
        first.sort()
        parts.append(
            (ids[first], np.full(len(first), dataset, object), np.full(len(first), train), hashes[first], labels[first])
        )
    empty = (
        np.zeros(0, str),
        np.zeros(0, str),
        np.zeros(0, bool),
        np.zeros((0, 4), np.uint64),
        np.zeros((0, NUM_CLASSES)),
    )
    cat = [np.concatenate([p[k] for p in parts]) if parts else empty[k] for k in range(5)]
    return Fields(
        cat[0].astype(str), cat[1].astype(str), cat[2].astype(bool), cat[3].astype(np.uint64), cat[4].astype(np.uint8)
    )


@dataclass
class Shard:
    images: np.ndarray
    ids: np.ndarray
    tile_origin: np.ndarray
    labels: np.ndarray | None
    attrs: dict


def read_shard(path: str | Path) -> Shard:
    """Whole shard into memory (tests, small data); training reads rows lazily instead."""
    with h5py.File(path, "r") as h5:
        return Shard(
            images=h5[h5n.IMAGES][...],
            ids=h5[h5n.IDS].asstr()[...],
            tile_origin=h5[h5n.TILE_ORIGIN][...],
            labels=h5[h5n.LABELS][...] if h5n.LABELS in h5 else None,
            attrs=dict(h5.attrs),
        )
