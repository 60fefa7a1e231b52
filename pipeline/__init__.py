"""Precompute pipeline: read data, generate OOD views, run the frozen teacher once, write shards.

Run it with `robustkd precompute --config configs/<name>.yaml` (or `make precompute DATASET=name`).
It never imports `trainer`; both sides meet only through `schemas`.
"""
