"""Where things are on disk, and how a dataset's Ids split into shard jobs.

Standard library only: the Snakefile imports this at planning time, in the launcher env
(snakemake and the SLURM plugin, no image stack).
"""

from __future__ import annotations

import math
from pathlib import Path

COLORS = ("red", "green", "blue", "yellow")
# Extension of the channel files for each `format:` of a dataset.
EXTENSIONS = {"png": "png", "tiff": "tif", "jpg": "jpg"}
# HPAv18 JPEGs are RGB with the signal of their colour in these planes (BGR indices, as cv2 reads
# them); yellow is red and green equally. The reader (io) and the demo's writer share it.
JPEG_PLANES = {"red": (2,), "green": (1,), "blue": (0,), "yellow": (2, 1)}


def channel_path(images_dir: str | Path, image_id: str, color: str, fmt: str) -> Path:
    """`{images}/{Id}_{color}.{ext}`; for TIFF both `.tif` and `.tiff` are accepted."""
    base = Path(images_dir) / f"{image_id}_{color}.{EXTENSIONS[fmt]}"
    if fmt == "tiff" and not base.exists():
        alt = base.with_suffix(".tiff")
        if alt.exists():
            return alt
    return base


def shard_count(n_ids: int, shard_size: int) -> int:
    return max(1, math.ceil(n_ids / shard_size))


def shard_slice(index: int, n_ids: int, shard_size: int) -> slice:
    """Rows of the label table that go into shard `index` (contiguous, in csv order)."""
    if not 0 <= index < shard_count(n_ids, shard_size):
        raise ValueError(f"shard index {index} out of range for {n_ids} Ids in shards of {shard_size}")
    return slice(index * shard_size, min((index + 1) * shard_size, n_ids))


def find_ids(images_dir: str | Path, fmt: str, shown: int = 10) -> list[str]:
    """The Ids of a folder of channel files `{Id}_{red,green,blue,yellow}.{ext}`, sorted; every Id must
    have all four. Other files are ignored. Errors (ValueError) name the folder and the missing files."""
    folder = Path(images_dir)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    exts = (".tif", ".tiff") if fmt == "tiff" else (f".{EXTENSIONS[fmt]}",)
    found: dict[str, set[str]] = {}
    for p in folder.iterdir():
        stem = next((p.name[: -len(e)] for e in exts if p.name.endswith(e)), None)
        image_id, _, color = (stem or "").rpartition("_")
        if image_id and color in COLORS:
            found.setdefault(image_id, set()).add(color)
    if not found:
        pattern = "{Id}_{red,green,blue,yellow}" + "|".join(exts)
        raise ValueError(f"{folder}: no {fmt} channel files ({pattern}) found")
    missing = [channel_path(folder, i, c, fmt) for i in sorted(found) for c in COLORS if c not in found[i]]
    if missing:
        more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
        raise ValueError(
            f"{folder}: {len(missing)} channel file(s) missing (each Id needs red, green, blue and yellow): "
            + ", ".join(str(p) for p in missing[:shown])
            + more
        )
    return sorted(found)
