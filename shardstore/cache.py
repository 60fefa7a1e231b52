"""The local shard-set cache: one folder per complete shard set, named by its id.

    cache = ShardCache()            # $ROBUSTKD_CACHE, else $XDG_CACHE_HOME/robustkd/shards
    cache.path("3f9c0a…")           # <root>/3f9c0a…/ with manifest.json and the shards

A set counts as present only when its folder contains `manifest.json`: a pull downloads into
`<root>/.<id>.partial/`, checks every file, writes the manifest last and then renames the
folder, so an interrupted pull leaves nothing that looks complete and can be resumed.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from schemas.errors import ShardSetError
from schemas.manifest import MANIFEST_NAME, SHARD_SET_ID_PATTERN, Manifest

__all__ = ["CACHE_ENV", "ShardCache", "check_id", "default_cache_root"]

log = logging.getLogger(__name__)

CACHE_ENV = "ROBUSTKD_CACHE"


def default_cache_root() -> Path:
    """Return `$ROBUSTKD_CACHE`, else `$XDG_CACHE_HOME/robustkd/shards` (`~/.cache` by default)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robustkd" / "shards"


def check_id(shard_set_id: str) -> str:
    """Return `shard_set_id` if it is well formed; raise `ShardSetError` otherwise."""
    if not SHARD_SET_ID_PATTERN.match(shard_set_id):
        raise ShardSetError(
            f"{shard_set_id!r} is not a shard-set id: expected 16 lowercase hex digits, as "
            "printed by `robustkd shards ls` or `robustkd shards id --config ...`"
        )
    return shard_set_id


class ShardCache:
    """A folder of complete shard sets, `<root>/<id>/`, plus partial downloads."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_root()

    def path(self, shard_set_id: str) -> Path:
        return self.root / check_id(shard_set_id)

    def partial_path(self, shard_set_id: str) -> Path:
        return self.root / f".{check_id(shard_set_id)}.partial"

    def has(self, shard_set_id: str) -> bool:
        return (self.path(shard_set_id) / MANIFEST_NAME).is_file()

    def ids(self) -> list[str]:
        """Ids of the complete shard sets in the cache, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if SHARD_SET_ID_PATTERN.match(p.name) and (p / MANIFEST_NAME).is_file()
        )

    def partial_ids(self) -> list[str]:
        """Ids of interrupted pulls that a later pull resumes."""
        if not self.root.is_dir():
            return []
        names = (p.name for p in self.root.iterdir() if p.name.endswith(".partial"))
        return sorted(n[1 : -len(".partial")] for n in names)

    def manifest(self, shard_set_id: str) -> Manifest:
        if not self.has(shard_set_id):
            raise ShardSetError(
                f"shard set {shard_set_id} is not in the cache {self.root}; "
                f"run `robustkd shards pull {shard_set_id} --remote URL`"
            )
        return Manifest.read(self.path(shard_set_id))

    def remove(self, shard_set_id: str) -> bool:
        """Delete a shard set and any partial download of it; return whether anything existed."""
        removed = False
        for path in (self.path(shard_set_id), self.partial_path(shard_set_id)):
            if path.exists():
                # Dropping the manifest first leaves an incomplete folder, never a damaged
                # set that looks complete, if the removal stops halfway.
                (path / MANIFEST_NAME).unlink(missing_ok=True)
                shutil.rmtree(path)
                removed = True
        log.info("removed shard set %s from %s", shard_set_id, self.root)
        return removed
