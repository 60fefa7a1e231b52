"""Helpers shared by the benchmark readers: folder listing, sample keys, CSV checks, fingerprints.

Every reader validates its layout before returning records and reports all problems in one
`DatasetError`; `raise_layout_problems` formats that message the same way for every reader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schemas.errors import DatasetError

__all__ = [
    "IMAGE_EXTENSIONS",
    "FileEntry",
    "check_listed_files",
    "digest_entries",
    "find_data_folder",
    "holdout_masks",
    "list_images",
    "list_subfolders",
    "make_keys",
    "raise_layout_problems",
    "read_metadata_csv",
    "slug",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File name endings taken as images, compared case-insensitively (as torchvision's ImageFolder)."""

MAX_LISTED = 20
"""Problems shown in one error message; the rest are counted."""

FileEntry = tuple[str, int]
"""A file's path relative to the data set root and its size in bytes."""


def is_hidden(name: str) -> bool:
    """Tell whether a file or folder name starts with a dot, like `.ipynb_checkpoints`."""
    return name.startswith(".")


def list_subfolders(folder: Path) -> list[str]:
    """Return the sorted names of the visible subfolders of `folder`."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not is_hidden(e.name))


def list_images(folder: Path) -> list[FileEntry]:
    """Return (name, size) of the visible image files directly inside `folder`, sorted by name."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if is_hidden(entry.name) or not entry.is_file():
                continue
            if entry.name.lower().endswith(IMAGE_EXTENSIONS):
                found.append((entry.name, entry.stat().st_size))
    return sorted(found)


def check_listed_files(
    root: Path, relative_paths: Sequence[str], source: str
) -> tuple[list[str], list[int]]:
    """Check that every file listed in a metadata file exists, reading each folder only once.

    Returns the problems (one per missing folder, or per missing file inside a present folder)
    and the size of every listed file, -1 where it is missing.
    """
    by_folder: dict[str, dict[str, int] | None] = {}
    for path in relative_paths:
        folder = path.rpartition("/")[0]
        if folder not in by_folder:
            by_folder[folder] = None
            if (root / folder).is_dir():
                with os.scandir(root / folder) as entries:
                    by_folder[folder] = {e.name: e.stat().st_size for e in entries if e.is_file()}
    problems = []
    sizes = []
    missing_per_folder: dict[str, int] = {}
    for path in relative_paths:
        folder, _, name = path.rpartition("/")
        present = by_folder[folder]
        size = -1 if present is None else present.get(name, -1)
        sizes.append(size)
        if present is None:
            missing_per_folder[folder] = missing_per_folder.get(folder, 0) + 1
        elif size < 0:
            problems.append(f"missing file {path} (listed in {source})")
    problems = [
        f"missing folder {folder}/ ({count} file(s) listed in {source})"
        for folder, count in missing_per_folder.items()
    ] + problems
    return problems, sizes


def slug(text: str) -> str:
    """Replace every run of characters other than letters, digits, '_' and '-' with '_'."""
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_") or "_"


def make_keys(relative_paths: Sequence[str]) -> list[str]:
    """Build one sample key per relative path: its slug, plus a hash suffix where slugs collide.

    Folder separators become '-' and other characters outside letters, digits, '_' and '-' become
    '_'. Two paths whose slugs are equal (for example `a b.jpg` and `a_b.jpg`) both get the first
    12 hex digits of their path's sha1 appended, so the keys stay unique and depend only on the
    file list.
    """
    slugs = ["-".join(slug(part) for part in path.split("/")) for path in relative_paths]
    seen: dict[str, int] = {}
    for s in slugs:
        seen[s] = seen.get(s, 0) + 1
    keys = []
    for path, s in zip(relative_paths, slugs, strict=True):
        if seen[s] > 1:
            s = f"{s}-{hashlib.sha1(path.encode()).hexdigest()[:12]}"
        keys.append(s)
    if len(set(keys)) != len(keys):
        raise DatasetError("sample keys are not unique after adding path hashes; rename the files")
    return keys


def raise_layout_problems(reader: str, root: str | Path, problems: list[str], fix: str) -> None:
    """Raise one `DatasetError` that lists every layout problem, if there is any."""
    if not problems:
        return
    shown = problems[:MAX_LISTED]
    lines = "\n".join(f"  - {p}" for p in shown)
    if len(problems) > MAX_LISTED:
        lines += f"\n  - ... and {len(problems) - MAX_LISTED} more"
    raise DatasetError(
        f"{reader}: the data set under {root} does not match the expected layout "
        f"({len(problems)} problem(s)):\n{lines}\nFix: {fix}"
    )


def find_data_folder(root: str | Path, folder_name: str, marker: str, reader: str) -> Path:
    """Return `root` if it contains `marker`, else `root/folder_name` if that one does.

    WILDS takes the parent of `rxrx1_v1.0` as its root, while users often give the folder itself,
    so both are accepted and the choice is logged.
    """
    root = Path(root)
    if (root / marker).exists():
        return root
    nested = root / folder_name
    if (nested / marker).exists():
        log.info("%s: using %s because %s contains no %s", reader, nested, root, marker)
        return nested
    return root


def read_metadata_csv(
    path: Path, required: Sequence[str], reader: str, fix: str, dtype: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Read a metadata CSV and check that it has every required column and no empty cells there."""
    if not path.is_file():
        raise_layout_problems(reader, path.parent, [f"missing file {path.name}"], fix)
    frame = pd.read_csv(path, dtype=dtype)
    missing = [c for c in required if c not in frame.columns]
    problems = [f"{path.name}: missing column {c!r}" for c in missing]
    for column in required:
        if column in frame.columns and frame[column].isna().any():
            rows = frame.index[frame[column].isna()].tolist()
            problems.append(
                f"{path.name}: column {column!r} is empty in rows {rows[:5]} "
                f"({len(rows)} row(s) in all)"
            )
    if problems:
        problems.append(f"{path.name} has columns {list(frame.columns)}")
    raise_layout_problems(reader, path.parent, problems, fix)
    return frame


def digest_entries(
    reader: str, options: dict[str, Any], entries: Iterable[FileEntry], extra: bytes = b""
) -> str:
    """Return a sha256 over the reader name, its options, extra bytes and (path, size) pairs."""
    digest = hashlib.sha256(reader.encode())
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    digest.update(extra)
    for path, size in entries:
        digest.update(f"{path}\0{size}\n".encode())
    return digest.hexdigest()


def holdout_masks(groups: Sequence[str], fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Assign items to holdout parts, drawing each fraction separately within each group.

    Returns one boolean mask per fraction; items in no mask stay in the remaining part. Within a
    group of n items, part i takes floor(fraction_i * n) items, as DomainBed's holdout does, from
    a permutation seeded by `seed` and the group's name, so adding files to one group leaves the
    other groups unchanged.
    """
    groups = np.asarray(groups, dtype=object)
    masks = [np.zeros(len(groups), dtype=bool) for _ in fractions]
    for group in sorted(set(groups.tolist())):
        index = np.flatnonzero(groups == group)
        group_seed = int.from_bytes(hashlib.sha256(f"{seed}|{group}".encode()).digest()[:4], "big")
        order = index[np.random.default_rng(group_seed).permutation(len(index))]
        start = 0
        for mask, fraction in zip(masks, fractions, strict=True):
            count = int(fraction * len(index))
            mask[order[start : start + count]] = True
            start += count
    return masks
