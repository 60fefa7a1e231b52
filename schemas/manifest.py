"""The manifest of a shard set: provenance, teacher identity, layout and per-shard checksums.

The pipeline writes `manifest.json` last, after every shard is closed, so a folder without one
is unfinished. The trainer reads it to find shards, check their checksums and compare the
teacher fingerprint against the student's base weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from schemas import SCHEMA_VERSION
from schemas.errors import ShardSetError
from schemas.sample import SPLITS, TargetLayout

__all__ = ["MANIFEST_NAME", "Manifest", "ShardInfo", "TeacherFingerprint", "sha256_file"]

MANIFEST_NAME = "manifest.json"


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
        return cls.from_dict(json.loads(path.read_text()))

    def verify(self, folder: str | Path) -> None:
        """Raise `ShardSetError` naming every shard whose size or sha256 differs."""
        folder = Path(folder)
        problems = []
        for shard in self.shards:
            for name, size, digest in (
                (shard.tar, shard.tar_bytes, shard.tar_sha256),
                (shard.parquet, shard.parquet_bytes, shard.parquet_sha256),
            ):
                path = folder / name
                if not path.is_file():
                    problems.append(f"{name}: missing")
                elif path.stat().st_size != size:
                    problems.append(f"{name}: {path.stat().st_size} bytes, manifest says {size}")
                elif sha256_file(path) != digest:
                    problems.append(f"{name}: sha256 differs from the manifest")
        if problems:
            raise ShardSetError(f"shard set {folder} failed verification: " + "; ".join(problems))
