"""Shard sets as shareable artefacts: ids, a local cache, remote stores, push, pull and verify.

Both `pipeline/` and `trainer/` import this package; it imports neither, except that
`robustkd shards id` and `robustkd shards verify --recompute` load the pipeline inside the
command. Modules:

- `ids`: the shard-set id, a hash of the teacher, data set, generator config and storage options
- `targets`: how a tapped module output becomes a stored activation (pooling, projection)
- `cache`: the local cache folder, one complete shard set per `<id>/` folder
- `remote`: S3-compatible stores and plain folders, through `pyarrow.fs`
- `transfer`: push (shards first, manifest last, resumable) and pull (every sha256 checked)
- `verify`: counts, checksums and the id of a local shard set
- `resolve`: the folder a training run reads, pulling the set into the cache when needed
- `cli`: the `robustkd shards ls|push|pull|verify|rm|id` commands
"""
