"""Shard writers: one WebDataset tar plus one Parquet file per shard, written atomically.

Each shard is written under temporary names and renamed when complete; its `ShardInfo` record
(`<shard>.done.json`) is written last. A rerun treats a shard as finished only when that record
exists and the files match it, so an interrupted run leaves either a finished shard or nothing
that counts. A write error (a full disk, a file size limit) removes every file of the shard,
temporary or renamed, before the error propagates.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from dataclasses import asdict
from pathlib import Path

import pyarrow.parquet as pq
import webdataset as wds

from schemas.errors import ShardSetError
from schemas.manifest import ShardInfo, sha256_file
from schemas.sample import (
    EncodedSample,
    StoredSample,
    TargetLayout,
    encode_sample,
    parquet_table,
    wds_members,
)

__all__ = ["STORAGE_FILE", "ShardWriter", "check_storage_record", "read_done_record"]

STORAGE_FILE = "storage.json"

log = logging.getLogger(__name__)


def _done_path(folder: Path, shard: str) -> Path:
    return folder / f"{shard}.done.json"


def read_done_record(folder: Path, shard: str) -> ShardInfo | None:
    """Return the shard's record if the shard is finished and its files still match it."""
    path = _done_path(folder, shard)
    if not path.is_file():
        return None
    info = ShardInfo(**json.loads(path.read_text()))
    for name, size in ((info.tar, info.tar_bytes), (info.parquet, info.parquet_bytes)):
        file = folder / name
        if not file.is_file() or file.stat().st_size != size:
            log.warning(
                "shard %s: %s is missing or changed size; it will be rewritten", shard, name
            )
            return None
    return info


def check_storage_record(folder: Path, storage: dict) -> None:
    """Record the storage options of a shard folder, or reject one written with other options.

    Finished shards are reused by a rerun, so mixing storage options in one folder would give a
    shard set whose shards disagree with its manifest's layout.
    """
    path = folder / STORAGE_FILE
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded != storage and any(folder.glob("*.done.json")):
            raise ShardSetError(
                f"{folder} contains shards stored with precompute.storage {recorded}, but the "
                f"config requests {storage}; set precompute.output to a new folder, or delete "
                "this one to recompute it"
            )
        if recorded == storage:
            return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(storage, sort_keys=True))
    os.replace(tmp, path)


class ShardWriter:
    """Write one shard; use as a context manager.

        with ShardWriter(folder, "id_train-00000", "id_train", layout) as writer:
            writer.write(sample)
            writer.skip("unreadable_image")

    On a clean exit the tar and Parquet files are renamed into place and the done record is
    written. On an exception, raised in the block or while finishing the files, every file of
    the shard is removed and nothing is recorded.
    """

    def __init__(self, folder: str | Path, shard: str, split: str, layout: TargetLayout):
        self.folder = Path(folder)
        self.shard = shard
        self.split = split
        self.layout = layout
        self.tar_path = self.folder / f"{shard}.tar"
        self.parquet_path = self.folder / f"{shard}.parquet"
        self._tmp_tar = self.folder / f".{shard}.tar.tmp"
        self._tmp_parquet = self.folder / f".{shard}.parquet.tmp"
        self._done = _done_path(self.folder, shard)
        self._tmp_done = self._done.with_suffix(".tmp")
        self._encoded: list[EncodedSample] = []
        self._skipped: dict[str, int] = {}
        self._tar: wds.TarWriter | None = None

    def __enter__(self) -> ShardWriter:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._tar = wds.TarWriter(str(self._tmp_tar))
        # GNU headers take half the time of the default PAX ones and still allow long member
        # names. webdataset 1.0.2 ignores its own `format` argument, so it is set here.
        self._tar.tarstream.format = tarfile.GNU_FORMAT
        return self

    def write(self, sample: StoredSample) -> None:
        if sample.split != self.split:
            raise ValueError(
                f"sample {sample.key} has split {sample.split}, but this shard is for {self.split}"
            )
        # One encoding serves both files: PNG compression is the costliest step of a write.
        encoded = encode_sample(sample, self.layout)
        self._tar.write(wds_members(encoded))
        self._encoded.append(encoded)

    def skip(self, reason: str) -> None:
        self._skipped[reason] = self._skipped.get(reason, 0) + 1

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._tar.close()
            if exc_type is None:
                self._finish()
        except BaseException:
            self._cleanup(renamed_too=True)
            raise
        if exc_type is not None:
            self._cleanup()

    def _finish(self) -> ShardInfo:
        # Parquet first, then both renames, then the done record: a crash at any point leaves
        # no done record, so the shard is rewritten on the next run.
        pq.write_table(parquet_table(self._encoded, self.layout), self._tmp_parquet)
        for tmp in (self._tmp_tar, self._tmp_parquet):
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(self._tmp_tar, self.tar_path)
        os.replace(self._tmp_parquet, self.parquet_path)
        info = ShardInfo(
            split=self.split,
            tar=self.tar_path.name,
            parquet=self.parquet_path.name,
            samples=len(self._encoded),
            tar_bytes=self.tar_path.stat().st_size,
            tar_sha256=sha256_file(self.tar_path),
            parquet_bytes=self.parquet_path.stat().st_size,
            parquet_sha256=sha256_file(self.parquet_path),
            skipped=dict(self._skipped),
        )
        self._tmp_done.write_text(json.dumps(asdict(info), indent=2, sort_keys=True))
        os.replace(self._tmp_done, self._done)
        self.info = info
        return info

    def _cleanup(self, renamed_too: bool = False) -> None:
        """Remove the temporary files and, after a failed finish, the renamed ones as well."""
        paths = [self._tmp_tar, self._tmp_parquet, self._tmp_done]
        if renamed_too:
            paths += [self.tar_path, self.parquet_path, self._done]
        for path in paths:
            path.unlink(missing_ok=True)
        log.warning("shard %s: write failed or was interrupted; its files were removed", self.shard)
