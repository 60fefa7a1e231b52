"""The work plan of a precompute run: every sample to produce, grouped into shards.

The plan is a pure function of the config and the data set, so a rerun computes the same plan,
finds the shards that are already finished, and processes only the rest. Every view's seed is
derived from its source key, view index, generator config and the global seed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.datasets import DatasetReader, SourceRecord
from schemas.config import ExperimentConfig, config_to_dict
from schemas.sample import SPLITS

__all__ = ["Plan", "ShardPlan", "build_plan", "derive_seed"]

log = logging.getLogger(__name__)


def derive_seed(*parts: Any) -> int:
    """Return a 31-bit seed determined by `parts` alone, on any machine."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def _json_sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _image_npy(record: SourceRecord) -> bytes:
    if record.image is None:
        return b""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(record.image), allow_pickle=False)
    return buffer.getvalue()


@dataclass
class ShardPlan:
    """One shard to produce and the work items that fill it."""

    name: str
    split: str
    items: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Plan:
    shards: list[ShardPlan]
    fingerprint: str
    """sha256 over every item's key, source and generator spec, and the teacher config."""

    def counts(self) -> dict[str, int]:
        return {s: sum(len(p.items) for p in self.shards if p.split == s) for s in SPLITS}


def _subset(
    records: list[SourceRecord], limit: int | None, seed: int, held_out: int = 0
) -> tuple[list[SourceRecord], list[SourceRecord]]:
    """Return (subset, held-out) drawn from one seeded permutation, each in key order.

    The first `held_out` permuted records form the held-out part; the next `limit` (or all
    the rest) form the subset.
    """
    if held_out == 0 and (limit is None or limit >= len(records)):
        return records, []
    order = np.random.default_rng(seed).permutation(len(records))
    end = len(records) if limit is None else held_out + limit
    keep, rest = np.sort(order[held_out:end]), np.sort(order[:held_out])
    return [records[i] for i in keep], [records[i] for i in rest]


def _item(
    record: SourceRecord,
    split: str,
    key: str,
    generator: str,
    seed: int,
    gen_index: int = -1,
    params: dict | None = None,
) -> dict[str, Any]:
    """Return a work item of plain columns only, so that Ray Data can keep it in Arrow blocks."""
    return {
        "key": key,
        "split": split,
        "source_key": record.key,
        "label": int(record.label),
        "domain": record.domain,
        "generator": generator,
        "gen_index": gen_index,
        "fixed_params": json.dumps(params, sort_keys=True) if params is not None else "",
        "seed": seed,
        "path": record.path or "",
        "image_npy": _image_npy(record),
    }


def _ood_train_items(records: list[SourceRecord], cfg: ExperimentConfig) -> list[dict[str, Any]]:
    gens = cfg.ood.train
    if not gens:
        return []
    weights = np.array([g.weight for g in gens], dtype=np.float64)
    weights /= weights.sum()
    gen_hash = _json_sha256([config_to_dict(g) for g in gens])[:16]
    items = []
    for record in records:
        for view in range(cfg.ood.views_per_image):
            choice_rng = np.random.default_rng(
                derive_seed(record.key, view, "choice", cfg.ood.seed)
            )
            index = int(choice_rng.choice(len(gens), p=weights))
            seed = derive_seed(record.key, view, gen_hash, cfg.ood.seed)
            key = f"{record.key}-v{view}"
            items.append(_item(record, "ood_train", key, gens[index].name, seed, gen_index=index))
    return items


def seen_corruption_families(cfg: ExperimentConfig) -> set[str]:
    """Corruption families that the training generators can produce."""
    from pipeline.ood import BENCHMARK_CORRUPTIONS, corruption_family

    seen = set()
    for gen in cfg.ood.train:
        if gen.name == "corruption":
            # The corruption generator's own default is the 15 benchmark corruptions.
            names = gen.params.get("corruptions") or list(BENCHMARK_CORRUPTIONS)
            seen.update(corruption_family(n) for n in names)
    return seen


def _ood_test_grid(records: list[SourceRecord], cfg: ExperimentConfig) -> list[dict[str, Any]]:
    from pipeline.ood import corruption_family

    test = cfg.ood.test
    subset = records if test.images_per_set is None else records[: test.images_per_set]
    seen = seen_corruption_families(cfg)
    items = []
    for corruption in test.corruptions:
        family = corruption_family(corruption)
        for severity in test.severities:
            params = {
                "corruption": corruption,
                "severity": severity,
                "family": family,
                "seen": family in seen,
            }
            for record in subset:
                key = f"{record.key}-{corruption}-s{severity}"
                seed = derive_seed(record.key, corruption, severity, cfg.ood.seed)
                items.append(_item(record, "ood_test", key, "corruption", seed, params=params))
    return items


def _identity_items(records: list[SourceRecord], split: str) -> list[dict[str, Any]]:
    return [_item(r, split, r.key, "identity", 0) for r in records]


def build_plan(cfg: ExperimentConfig, reader: DatasetReader) -> Plan:
    """List every sample of the shard set, in a fixed order, cut into shards."""
    ds = cfg.dataset
    carve_val = 0 if ds.id_val_split else ds.val_samples
    train, val = _subset(
        reader.records(ds.id_train_split), ds.max_train_samples, ds.subset_seed, held_out=carve_val
    )
    test, _ = _subset(reader.records(ds.id_test_split), ds.max_test_samples, ds.subset_seed + 1)
    by_split: dict[str, list[dict[str, Any]]] = {
        "id_train": _identity_items(train, "id_train"),
        "ood_train": _ood_train_items(train, cfg),
        "id_val": _identity_items(val, "id_val"),
        "ood_val": [],
        "id_test": _identity_items(test, "id_test"),
        "ood_test": [],
    }
    if ds.id_val_split:
        by_split["id_val"] = _identity_items(reader.records(ds.id_val_split), "id_val")
    for split in ds.ood_val_splits:
        by_split["ood_val"] += _identity_items(reader.records(split), "ood_val")
    for split in ds.ood_test_splits:
        by_split["ood_test"] += _identity_items(reader.records(split), "ood_test")
    by_split["ood_test"] += _ood_test_grid(test, cfg)

    split_of: dict[str, str] = {}
    for split in SPLITS:
        for it in by_split[split]:
            if it["key"] in split_of:
                raise ValueError(
                    f"sample key {it['key']!r} is in both {split_of[it['key']]} and {split}: the "
                    "config uses one reader split in two roles (for example id_val_split equal to "
                    "id_test_split); give each role its own split, or use dataset.val_samples"
                )
            split_of[it["key"]] = split
    shards = []
    digest = hashlib.sha256()
    digest.update(json.dumps(config_to_dict(cfg.teacher), sort_keys=True).encode())
    digest.update(json.dumps(config_to_dict(cfg.ood), sort_keys=True).encode())
    digest.update(str(ds.image_size).encode())
    for split in SPLITS:
        items = by_split[split]
        keys = [it["key"] for it in items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"split {split}: sample keys are not unique; check the reader's keys")
        for start in range(0, len(items), cfg.precompute.shard_size):
            chunk = items[start : start + cfg.precompute.shard_size]
            name = f"{split}-{start // cfg.precompute.shard_size:05d}"
            shards.append(ShardPlan(name=name, split=split, items=chunk))
            for it in chunk:
                digest.update(
                    f"{name}|{it['key']}|{it['source_key']}|{it['label']}|{it['domain']}|"
                    f"{it['generator']}|{it['gen_index']}|{it['fixed_params']}|{it['seed']}".encode()
                )
    plan = Plan(shards=shards, fingerprint=digest.hexdigest())
    log.info("plan: %s samples in %d shards", plan.counts(), len(shards))
    return plan
