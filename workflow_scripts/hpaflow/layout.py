"""Where things are on disk, and how a dataset's Ids split into shard jobs.

Standard library only: the Snakefile imports this at planning time, in the launcher env
(snakemake and the SLURM plugin, no image stack).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from . import h5names as h5n

COLORS = ("red", "green", "blue", "yellow")
# Extension of the channel files for each `format:` of a dataset (the canonical one, written by the demo).
EXTENSIONS = {"png": "png", "tiff": "tif", "jpg": "jpg"}
# Every extension a channel file of a format may have, lower case, canonical first; they match in any case
# (.PNG, .Tif), since cameras and Windows tools write upper case.
SUFFIXES = {"png": (".png",), "tiff": (".tif", ".tiff"), "jpg": (".jpg", ".jpeg")}
# HPAv18 JPEGs are RGB with the signal of their colour in these planes (BGR indices, as cv2 reads
# them); yellow is red and green equally. The reader (io) and the demo's writer share it.
JPEG_PLANES = {"red": (2,), "green": (1,), "blue": (0,), "yellow": (2, 1)}


def channel_path(images_dir: str | Path, image_id: str, color: str, fmt: str) -> Path:
    """The file of one channel, `{images}/{Id}_{color}.{ext}`, with any extension of the format in any case
    (`.tif`, `.TIFF`, `.Png`); the canonical name when none exists (the reader then names it as missing).

    The canonical name is tried first, so the common case costs one stat; then upper case; a folder scan
    only for mixed case. A broken link or a directory under that name is returned as found: the reader
    names what is wrong with it.
    """
    folder = Path(images_dir)
    stem = f"{image_id}_{color}"
    canonical = folder / f"{stem}{SUFFIXES[fmt][0]}"
    if os.path.lexists(canonical):
        return canonical
    for suffix in SUFFIXES[fmt]:
        for variant in (suffix, suffix.upper()):
            path = folder / f"{stem}{variant}"
            if path != canonical and os.path.lexists(path):
                return path
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name.startswith(stem) and e.name[len(stem) :].lower() in SUFFIXES[fmt]:
                    return folder / e.name
    except OSError:  # no folder: the reader names the missing file
        pass
    return canonical


def parse_channel_name(name: str, fmt: str) -> tuple[str, str] | None:
    """(Id, colour) of a channel file name `{Id}_{color}.{ext}` of format `fmt` (extension in any case),
    else None."""
    lower = name.lower()
    suffix = next((s for s in SUFFIXES[fmt] if lower.endswith(s)), None)
    if suffix is None:
        return None
    image_id, _, color = name[: -len(suffix)].rpartition("_")
    return (image_id, color) if image_id and color in COLORS else None


@dataclass(frozen=True)
class Listing:
    """What a folder of channel files holds now: per Id the four file names as on disk (red, green, blue,
    yellow), and how many entries were ignored: dot-files (`._x_red.png` of macOS), subfolders, and files
    that are no channel file of the format."""

    folder: Path
    files: dict[str, tuple[str, str, str, str]]
    hidden: int = 0
    subfolders: int = 0
    other: int = 0

    @property
    def ids(self) -> list[str]:
        return sorted(self.files)

    def paths(self, image_id: str) -> list[Path]:
        """The four channel files of one Id, RGBY order."""
        return [self.folder / name for name in self.files[image_id]]

    def summary(self) -> str:
        """One line for the log: what was found and what was ignored."""
        ignored = [
            f"{n} {what}"
            for n, what in (
                (self.hidden, "dot-file(s)"),
                (self.subfolders, "subfolder(s)"),
                (self.other, "other file(s)"),
            )
            if n
        ]
        return f"{self.folder}: {len(self.files)} Ids" + (f"; ignored {', '.join(ignored)}" if ignored else "")


def _shown(items: list, shown: int) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(str(x) for x in items[:shown]) + more


def list_channels(images_dir: str | Path, fmt: str, shown: int = 10) -> Listing:
    """The channel files `{Id}_{red,green,blue,yellow}.{ext}` of a folder (extension of the format in any
    case); every Id must have all four, each a readable file, one per channel. Dot-files and subfolders are
    ignored and counted, as are other files. Errors (ValueError) name the folder and the files."""
    folder = Path(images_dir)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    found: dict[str, dict[str, str]] = {}
    hidden = subfolders = other = 0
    twice: list[str] = []
    unreadable: list[str] = []
    with os.scandir(folder) as entries:
        for e in sorted(entries, key=lambda e: e.name):  # sorted: errors and the choice of names repeat
            if e.name.startswith("."):
                hidden += 1
                continue
            parsed = parse_channel_name(e.name, fmt)
            if parsed is None:
                if e.is_dir():
                    subfolders += 1
                else:
                    other += 1
                continue
            image_id, color = parsed
            # A channel file must be read by the shard job: what cannot be is an error now, not a
            # shard job that cannot be built (Snakemake would then take an old shard as a source).
            if problem := _unreadable(Path(e.path), e):
                unreadable.append(f"{e.path} ({problem})")
            channels = found.setdefault(image_id, {})
            if color in channels:
                twice.append(f"{folder / channels[color]} and {e.path}")
            else:
                channels[color] = e.name
    if twice:
        raise ValueError(
            f"{folder}: {len(twice)} channel(s) given by two files (keep one of each): {_shown(twice, shown)}"
        )
    if unreadable:
        raise ValueError(f"{folder}: {len(unreadable)} channel file(s) cannot be read: {_shown(unreadable, shown)}")
    if not found:
        pattern = "{Id}_{red,green,blue,yellow}" + "|".join(SUFFIXES[fmt])
        ignored = f" ({hidden} dot-file(s), {subfolders} subfolder(s) ignored)" if hidden or subfolders else ""
        raise ValueError(f"{folder}: no {fmt} channel files ({pattern}, any case) found{ignored}")
    missing = []
    for image_id in sorted(found):
        channels = found[image_id]
        # Named with the extension its other channels have (x_yellow.PNG beside x_red.PNG).
        suffix = Path(next(iter(channels.values()))).suffix
        missing += [folder / f"{image_id}_{c}{suffix}" for c in COLORS if c not in channels]
    if missing:
        raise ValueError(
            f"{folder}: {len(missing)} channel file(s) missing (each Id needs red, green, blue and yellow): "
            + _shown(missing, shown)
        )
    files = {i: tuple(found[i][c] for c in COLORS) for i in sorted(found)}
    return Listing(folder, files, hidden, subfolders, other)  # type: ignore[arg-type]


def _unreadable(path: Path, entry: os.DirEntry) -> str | None:
    """Why a channel file cannot be read, or None."""
    if entry.is_symlink() and not path.exists():
        return f"broken symbolic link to {os.readlink(path)}"
    if entry.is_dir():
        return "a directory"
    if not entry.is_file():
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "no read permission"
    return None


def shard_count(n_ids: int, shard_size: int) -> int:
    return max(1, math.ceil(n_ids / shard_size))


def shard_slice(index: int, n_ids: int, shard_size: int) -> slice:
    """Rows of the label table that go into shard `index` (contiguous, in csv order)."""
    if not 0 <= index < shard_count(n_ids, shard_size):
        raise ValueError(f"shard index {index} out of range for {n_ids} Ids in shards of {shard_size}")
    return slice(index * shard_size, min((index + 1) * shard_size, n_ids))


def find_ids(images_dir: str | Path, fmt: str, shown: int = 10) -> list[str]:
    """The Ids of a folder of channel files, sorted (`list_channels`, whose errors it raises)."""
    return list_channels(images_dir, fmt, shown).ids


def indexed_shards(indexes: list[str | Path]) -> list[str]:
    """The shard files that the indexes (results/shards/{dataset}/index.json, rule shard_index) list, in
    order: a shard reader's input is the indexes, so that the shard files' boundaries rerun nothing."""
    files: list[str] = []
    for path in indexes:
        index = json.loads(Path(path).read_text())
        h5n.check_format(path, "shard", index.get(h5n.FORMAT))
        files += index["shards"]
    return files
