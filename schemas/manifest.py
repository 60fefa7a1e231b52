"""The manifest of a shard set: id, provenance, teacher identity, layout and file checksums.

The pipeline writes `manifest.json` last, after every shard is closed, so a folder without one
is unfinished; `robustkd shards push` uploads it last for the same reason. The trainer reads it
to find shards, check their checksums and compare the teacher fingerprint against the student's
base weights. The shard-set id is a hash of `id_inputs` (see `shardstore.ids`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from schemas import SCHEMA_VERSION
from schemas.errors import ShardSetError
from schemas.sample import SPLITS, TargetLayout

__all__ = [
    "MANIFEST_NAME",
    "SHARD_SET_ID_PATTERN",
    "FileDigest",
    "Manifest",
    "ShardInfo",
    "TeacherFingerprint",
    "sha256_file",
]

MANIFEST_NAME = "manifest.json"

SHARD_SET_ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
"""A shard-set id: the first 16 hex digits of the sha256 of the manifest's `id_inputs`."""


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class TeacherFingerprint:
    """Identity of the frozen teacher."""

    arch: str
    """Backbone family and variant, for example `efficientnet_lite0`."""
    weights_sha256: str
    """sha256 over the backbone's parameters and buffers, by name (see `backbones.fingerprint`)."""
    head: str
    """Head kind: `linear_probe`, `zero_shot` or `own`."""
    head_sha256: str
    """sha256 of the head's weights."""
    taps: list[str] = field(default_factory=list)

    def short(self) -> str:
        return f"{self.arch}@{self.weights_sha256[:12]}+{self.head}@{self.head_sha256[:12]}"


@dataclass
class ShardInfo:
    """One shard: a WebDataset tar and the Parquet file with the same samples."""

    split: str
    tar: str
    """Tar file name, relative to the shard set folder."""
    parquet: str
    samples: int
    tar_bytes: int
    tar_sha256: str
    parquet_bytes: int
    parquet_sha256: str
    skipped: dict[str, int] = field(default_factory=dict)
    """Inputs of this shard that were skipped, counted by reason."""


@dataclass
class FileDigest:
    """Size and sha256 of a file of the shard set that is not a shard (the teacher head)."""

    bytes: int
    sha256: str


@dataclass
class Manifest:
    """Everything needed to trust and use a shard set."""

    schema_version: int
    package_version: str
    git_commit: str
    created_at: str
    teacher: TeacherFingerprint
    dataset: dict[str, Any]
    """Reader name, fingerprint and the dataset config."""
    generator_config: dict[str, Any]
    """The `ood` config the views were generated with."""
    layout: TargetLayout
    classes: list[str]
    shards: list[ShardInfo]
    skipped: dict[str, int] = field(default_factory=dict)
    """Skipped inputs over the whole set, by reason."""
    shard_set_id: str = ""
    """Hash of `id_inputs`; the name of the set in caches and remote stores."""
    id_inputs: dict[str, Any] = field(default_factory=dict)
    """Inputs of the shard-set id: schema version, teacher, dataset, generators and storage."""
    teacher_config: dict[str, Any] = field(default_factory=dict)
    """The `teacher` config the targets were made with; `shards verify --recompute` rebuilds it."""
    extra_files: dict[str, FileDigest] = field(default_factory=dict)
    """Files beside the shards (the teacher head), by name."""

    def files(self) -> list[tuple[str, int, str]]:
        """List every file of the set except the manifest as (name, bytes, sha256)."""
        files = []
        for shard in self.shards:
            files.append((shard.tar, shard.tar_bytes, shard.tar_sha256))
            files.append((shard.parquet, shard.parquet_bytes, shard.parquet_sha256))
        for name, digest in sorted(self.extra_files.items()):
            files.append((name, digest.bytes, digest.sha256))
        return files

    def shards_of(self, split: str) -> list[ShardInfo]:
        if split not in SPLITS:
            raise ShardSetError(f"unknown split {split!r}; expected one of {SPLITS}")
        return [s for s in self.shards if s.split == split]

    def counts(self) -> dict[str, int]:
        return {split: sum(s.samples for s in self.shards_of(split)) for split in SPLITS}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layout"] = self.layout.to_dict()
        return data

    def write(self, folder: str | Path) -> Path:
        """Write `manifest.json` atomically into `folder`."""
        path = Path(folder) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ShardSetError(
                f"manifest schema_version {version!r} is not supported by this package "
                f"(expects {SCHEMA_VERSION}); re-run precompute with this version"
            )
        return cls(
            **{
                **data,
                "teacher": TeacherFingerprint(**data["teacher"]),
                "layout": TargetLayout.from_dict(data["layout"]),
                "shards": [ShardInfo(**s) for s in data["shards"]],
                "extra_files": {
                    name: FileDigest(**d) for name, d in data.get("extra_files", {}).items()
                },
            }
        )

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise ShardSetError(
                f"no {MANIFEST_NAME} in {folder}: the shard set is missing or unfinished; "
                "run `robustkd precompute` (it resumes where it stopped)"
            )
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except ShardSetError as exc:
            raise ShardSetError(f"{path}: {exc}") from None

    def verify(self, folder: str | Path) -> None:
        """Raise `ShardSetError` naming every file whose size or sha256 differs."""
        folder = Path(folder)
        problems = []
        for name, size, digest in self.files():
            path = folder / name
            if not path.is_file():
                problems.append(f"{name}: missing")
            elif path.stat().st_size != size:
                problems.append(f"{name}: {path.stat().st_size} bytes, manifest says {size}")
            elif sha256_file(path) != digest:
                problems.append(f"{name}: sha256 differs from the manifest")
        if problems:
            raise ShardSetError(f"shard set {folder} failed verification: " + "; ".join(problems))
