"""Find the shard-set folder that a training or evaluation run reads.

    folder = resolve_shards_dir(experiment)

With `shard_set: null` in the experiment config this is `precompute.output`, as before. With an
id, it is the cached copy of that set; if the cache lacks it, the folder `precompute.output` is
used when its manifest has that id, and otherwise the set is pulled from the remote store named
by `ROBUSTKD_REMOTE` (or the `remote` argument) first. Nothing here imports the pipeline, so a
training run from an id never builds the teacher.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from schemas.config import ExperimentConfig
from schemas.errors import ShardSetError
from schemas.manifest import MANIFEST_NAME, Manifest
from shardstore.cache import CACHE_ENV, ShardCache
from shardstore.remote import RemoteStore
from shardstore.transfer import pull

__all__ = ["REMOTE_ENV", "default_remote", "resolve_shards_dir"]

log = logging.getLogger(__name__)

REMOTE_ENV = "ROBUSTKD_REMOTE"


def default_remote() -> str | None:
    """Return the remote store URL from `ROBUSTKD_REMOTE`, or None."""
    return os.environ.get(REMOTE_ENV) or None


def resolve_shards_dir(
    experiment: ExperimentConfig,
    cache: ShardCache | None = None,
    remote: str | None = None,
) -> Path:
    """Return the folder of the experiment's shard set, pulling it into the cache if needed."""
    set_id = experiment.shard_set
    if set_id is None:
        return experiment.shards_dir()
    cache = cache or ShardCache()
    if cache.has(set_id):
        log.info("shard set %s: using the cached copy %s", set_id, cache.path(set_id))
        return cache.path(set_id)

    local = experiment.shards_dir()
    if (local / MANIFEST_NAME).is_file() and Manifest.read(local).shard_set_id == set_id:
        log.info("shard set %s: using precompute.output %s", set_id, local)
        return local

    url = remote or default_remote()
    if url is None:
        raise ShardSetError(
            f"shard set {set_id} is not in the cache {cache.root} (set {CACHE_ENV} to use "
            f"another) and no remote store is set; set {REMOTE_ENV}=s3://bucket/prefix, or run "
            f"`robustkd shards pull {set_id} --remote URL`"
        )
    store = RemoteStore(url)
    log.info("shard set %s is not in the cache %s; pulling it from %s", set_id, cache.root, store)
    folder = pull(set_id, store, cache)
    return folder
