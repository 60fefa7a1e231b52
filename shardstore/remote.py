"""Remote shard-set stores: S3-compatible object stores and plain folders, through `pyarrow.fs`.

    store = RemoteStore("s3://team-bucket/robustkd")   # or "/mnt/team/shards", "file:///..."
    store.ids()                                        # {"3f9c0a…": True}  (True: complete)

A set lives under `<url>/<id>/`, one object per file, `manifest.json` among them. The S3 client
is Arrow's (pyarrow's `S3FileSystem`, already a dependency), so credentials and settings come
from the AWS SDK's usual sources: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_SESSION_TOKEN`, `AWS_PROFILE` and `~/.aws/credentials`, `AWS_REGION` or
`AWS_DEFAULT_REGION`, and `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` for a store other than
AWS (MinIO, Ceph, moto). Arrow's URL options also work (`?endpoint_override=host:port&scheme=
http`; pyarrow 26 rejects credentials there). Logs and errors show a URL without its query
string or user part.

Each upload goes to `<name>.partial` and is then moved to `<name>`, because an S3 stream that
fails while open still completes its upload with the data it had; an object under its final
name is therefore always whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.parse
from pathlib import Path

import pyarrow.fs as pafs

from schemas.errors import ShardSetError
from schemas.manifest import MANIFEST_NAME, SHARD_SET_ID_PATTERN, Manifest

__all__ = ["CHUNK_BYTES", "LocalWriteError", "RemoteStore", "display_url"]

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20
"""Bytes read or written per call while copying an object."""


class LocalWriteError(ShardSetError):
    """Writing a downloaded object to local disk failed (a full disk, a file size limit)."""


def display_url(url: str) -> str:
    """Return `url` without its query string and user part, safe to log."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or len(parts.scheme) == 1:  # a plain path, or a Windows drive letter
        return url
    host = parts.hostname or ""
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _open_filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """Return the filesystem and base path of a remote URL or folder."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ("", "file") or len(scheme) == 1:
        path = url.removeprefix("file://") if scheme == "file" else url
        return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
    if scheme not in ("s3", "gs", "gcs", "hdfs", "abfs", "abfss"):
        raise ShardSetError(
            f"remote {display_url(url)!r}: scheme {scheme!r} is not supported; use "
            "s3://bucket/prefix, another pyarrow filesystem URL, or a folder path"
        )
    try:
        filesystem, path = pafs.FileSystem.from_uri(url)
    except (OSError, ValueError) as exc:
        raise ShardSetError(f"remote {display_url(url)!r} cannot be opened: {exc}") from None
    return filesystem, path.rstrip("/")


class RemoteStore:
    """Shard sets under one remote URL, one folder (or key prefix) per id."""

    def __init__(self, url: str):
        self.url = url
        self.filesystem, self.base = _open_filesystem(url)

    def __str__(self) -> str:
        return display_url(self.url)

    def _path(self, shard_set_id: str, name: str = "") -> str:
        return f"{self.base}/{shard_set_id}/{name}".rstrip("/")

    def size(self, shard_set_id: str, name: str) -> int | None:
        """Return the size of an object, or None if it does not exist."""
        info = self.filesystem.get_file_info(self._path(shard_set_id, name))
        return info.size if info.type == pafs.FileType.File else None

    def ids(self) -> dict[str, bool]:
        """Return every shard-set id under the URL, each with whether its manifest exists."""
        selector = pafs.FileSelector(self.base, recursive=False, allow_not_found=True)
        found = {}
        for info in self.filesystem.get_file_info(selector):
            name = info.base_name
            if info.type == pafs.FileType.Directory and SHARD_SET_ID_PATTERN.match(name):
                found[name] = self.size(name, MANIFEST_NAME) is not None
        return dict(sorted(found.items()))

    def read_bytes(self, shard_set_id: str, name: str) -> bytes:
        with self.filesystem.open_input_stream(self._path(shard_set_id, name)) as stream:
            return stream.read()

    def manifest(self, shard_set_id: str) -> tuple[Manifest, bytes] | None:
        """Return the set's manifest and its raw bytes, or None while the set is incomplete."""
        if self.size(shard_set_id, MANIFEST_NAME) is None:
            return None
        raw = self.read_bytes(shard_set_id, MANIFEST_NAME)
        return Manifest.from_dict(json.loads(raw)), raw

    def upload(self, source: Path, shard_set_id: str, name: str) -> None:
        """Copy a local file to `<id>/<name>`; the object appears only once complete."""
        final = self._path(shard_set_id, name)
        partial = final + ".partial"
        self.filesystem.create_dir(self._path(shard_set_id), recursive=True)
        try:
            with open(source, "rb") as src, self.filesystem.open_output_stream(partial) as dst:
                while chunk := src.read(CHUNK_BYTES):
                    dst.write(chunk)
            # NOTE: on S3 this move is a CopyObject call, which AWS limits to 5 GB per object.
            self.filesystem.move(partial, final)
        except BaseException:
            self._delete_quietly(partial)
            raise

    def download(self, shard_set_id: str, name: str, dest: Path, size: int, sha256: str) -> None:
        """Copy `<id>/<name>` to `dest`, checking its size and sha256 before it gets its name.

        The data goes to a hidden temporary file beside `dest`, which is removed on any error,
        so `dest` either contains the verified object or does not exist.
        """
        tmp = dest.with_name(f".{dest.name}.download")
        digest = hashlib.sha256()
        written = 0
        try:
            with self.filesystem.open_input_stream(self._path(shard_set_id, name)) as src:
                with open(tmp, "wb") as dst:
                    while chunk := src.read(CHUNK_BYTES):
                        self._write_local(dst, chunk, dest)
                        digest.update(chunk)
                        written += len(chunk)
                    self._write_local(dst, b"", dest, sync=True)
            if written != size or digest.hexdigest() != sha256:
                raise ShardSetError(
                    f"{name}: the object in {self} has {written} bytes and sha256 "
                    f"{digest.hexdigest()[:12]}…, the manifest says {size} bytes and "
                    f"{sha256[:12]}…; the remote copy is damaged, so push the set again from "
                    "a good copy"
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _write_local(file, chunk: bytes, dest: Path, sync: bool = False) -> None:
        """Write to a local file, reporting an OS error as `LocalWriteError`."""
        try:
            file.write(chunk)
            if sync:
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            raise LocalWriteError(
                f"writing {dest} failed ({exc}); nothing half-written was kept. Free space in "
                f"{dest.parent.parent} or point ROBUSTKD_CACHE elsewhere, then pull again: the "
                "files already checked are kept"
            ) from exc

    def check_object(self, shard_set_id: str, name: str, size: int, sha256: str) -> str | None:
        """Stream an object and return a problem with its size or sha256, or None."""
        digest = hashlib.sha256()
        written = 0
        with self.filesystem.open_input_stream(self._path(shard_set_id, name)) as src:
            while chunk := src.read(CHUNK_BYTES):
                digest.update(chunk)
                written += len(chunk)
        if written != size:
            return f"{name}: {written} bytes, the manifest says {size}"
        if digest.hexdigest() != sha256:
            return f"{name}: sha256 differs from the manifest"
        return None

    def remove(self, shard_set_id: str) -> bool:
        """Delete a shard set, manifest first; return whether it existed."""
        root = self._path(shard_set_id)
        if self.filesystem.get_file_info(root).type == pafs.FileType.NotFound:
            return False
        self._delete_quietly(self._path(shard_set_id, MANIFEST_NAME))
        self.filesystem.delete_dir_contents(root, missing_dir_ok=True)
        self.filesystem.delete_dir(root)
        log.info("removed shard set %s from %s", shard_set_id, self)
        return True

    def _delete_quietly(self, path: str) -> None:
        try:
            self.filesystem.delete_file(path)
        except (FileNotFoundError, OSError):
            pass
