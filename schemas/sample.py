"""The stored sample: one layout, written as WebDataset members and as Parquet columns.

A sample holds its key and split, the source sample it was generated from with the generator's
name, parameters and seed, its label and domain, the image, and the teacher's targets (logits and
one pooled activation per tapped layer). The same names are used on both sides:

| field            | WebDataset member   | Parquet column     |
|------------------|---------------------|--------------------|
| metadata         | `<key>.json`        | one column each    |
| image (uint8)    | `<key>.png`         | `png` (binary)     |
| logits (float32) | `<key>.logits.npy`  | `logits`           |
| activation of L  | `<key>.act.L.npy`   | `act.L`            |

Arrays go through `.npy` (loaded with `allow_pickle=False`) and fixed-size Parquet lists whose
dtype and shape come from the `TargetLayout` in the manifest.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from schemas.errors import ShardSetError

__all__ = [
    "KEY_PATTERN",
    "LayerSpec",
    "SPLITS",
    "StoredSample",
    "TargetLayout",
    "decode_wds",
    "encode_wds",
    "from_parquet",
    "to_parquet",
]

SPLITS = ("id_train", "ood_train", "id_val", "ood_val", "id_test", "ood_test")
"""Splits of a shard set: ID training data and its generated OOD views, ID and natural-shift
validation data, ID test data, and OOD test data (generated and natural shifts)."""

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
"""Sample keys contain no dots, because WebDataset splits member names at the first dot."""

_META_FIELDS = (
    "key",
    "split",
    "source_key",
    "generator",
    "generator_params",
    "generator_seed",
    "label",
    "domain",
)


@dataclass(frozen=True)
class LayerSpec:
    """One stored activation: the tapped module's name, its storage dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass
class TargetLayout:
    """Dtypes and shapes of every stored array; recorded once in the manifest."""

    image_size: int
    num_classes: int
    layers: list[LayerSpec] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "layers": [{**asdict(s), "shape": list(s.shape)} for s in self.layers],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetLayout:
        layers = [LayerSpec(d["name"], d["dtype"], tuple(d["shape"])) for d in data["layers"]]
        return cls(image_size=data["image_size"], num_classes=data["num_classes"], layers=layers)

    def layer_names(self) -> list[str]:
        return [s.name for s in self.layers]


@dataclass
class StoredSample:
    """One sample as stored in a shard."""

    key: str
    """Unique sample key, for example `train-000042-v1`."""
    split: str
    """One of `SPLITS`."""
    source_key: str
    """Key of the data set sample this one was generated from (itself for ID samples)."""
    generator: str
    """Generator that produced the image; `identity` for unmodified ID samples."""
    generator_params: dict[str, Any]
    """Parameters the generator applied, enough to regenerate the image."""
    generator_seed: int
    """Seed the generator used for this sample."""
    label: int
    """Class index; -1 for unlabeled samples."""
    domain: str
    """Source domain as the data set defines it (hospital, experiment, ...)."""
    image: np.ndarray
    """uint8 array of shape (H, W, 3)."""
    logits: np.ndarray
    """Teacher logits, float32, shape (num_classes,)."""
    activations: dict[str, np.ndarray]
    """Teacher activation per tapped layer, in the layout's dtype and shape."""

    def metadata(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _META_FIELDS}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def check_sample(sample: StoredSample, layout: TargetLayout) -> None:
    """Raise `ShardSetError` if `sample` does not match the layout."""
    problems = []
    if not KEY_PATTERN.match(sample.key):
        problems.append(f"key {sample.key!r} may only contain letters, digits, '_' and '-'")
    if sample.split not in SPLITS:
        problems.append(f"split {sample.split!r} is not one of {SPLITS}")
    size = layout.image_size
    if sample.image.dtype != np.uint8 or sample.image.shape != (size, size, 3):
        problems.append(
            f"image is {sample.image.dtype} {sample.image.shape}, "
            f"expected uint8 ({size}, {size}, 3)"
        )
    if sample.logits.dtype != np.float32 or sample.logits.shape != (layout.num_classes,):
        problems.append(
            f"logits are {sample.logits.dtype} {sample.logits.shape}, "
            f"expected float32 ({layout.num_classes},)"
        )
    for spec in layout.layers:
        act = sample.activations.get(spec.name)
        if act is None:
            problems.append(f"activation {spec.name!r} is missing")
        elif str(act.dtype) != spec.dtype or act.shape != spec.shape:
            problems.append(
                f"activation {spec.name!r} is {act.dtype} {act.shape}, "
                f"expected {spec.dtype} {spec.shape}"
            )
    if problems:
        raise ShardSetError(
            f"sample {sample.key!r} does not match the layout: " + "; ".join(problems)
        )


def encode_wds(sample: StoredSample) -> dict[str, Any]:
    """Return the WebDataset member dict of `sample` (`__key__` plus one entry per member)."""
    members: dict[str, Any] = {
        "__key__": sample.key,
        "json": json.dumps(sample.metadata(), sort_keys=True).encode(),
        "png": _png_bytes(sample.image),
        "logits.npy": _npy_bytes(sample.logits),
    }
    for name, array in sample.activations.items():
        members[f"act.{name}.npy"] = _npy_bytes(array)
    return members


def decode_wds(members: dict[str, Any]) -> StoredSample:
    """Rebuild a `StoredSample` from raw WebDataset members (bytes values)."""
    meta = json.loads(members["json"])
    activations = {}
    for member, data in members.items():
        if member.startswith("act.") and member.endswith(".npy"):
            name = member[len("act.") : -len(".npy")]
            activations[name] = np.load(io.BytesIO(data), allow_pickle=False)
    return StoredSample(
        **meta,
        image=_decode_png(members["png"]),
        logits=np.load(io.BytesIO(members["logits.npy"]), allow_pickle=False),
        activations=activations,
    )


def parquet_schema(layout: TargetLayout) -> pa.Schema:
    """Return the Parquet schema of a shard with this layout."""
    fields = [
        pa.field("key", pa.string()),
        pa.field("split", pa.string()),
        pa.field("source_key", pa.string()),
        pa.field("generator", pa.string()),
        pa.field("generator_params", pa.string()),
        pa.field("generator_seed", pa.int64()),
        pa.field("label", pa.int64()),
        pa.field("domain", pa.string()),
        pa.field("png", pa.binary()),
        pa.field("logits", pa.list_(pa.float32(), layout.num_classes)),
    ]
    for spec in layout.layers:
        size = int(np.prod(spec.shape))
        fields.append(pa.field(f"act.{spec.name}", pa.list_(pa.from_numpy_dtype(spec.dtype), size)))
    return pa.schema(fields, metadata={"target_layout": json.dumps(layout.to_dict())})


def _fixed_list(arrays: list[np.ndarray], type_: pa.DataType) -> pa.Array:
    flat = np.stack([a.reshape(-1) for a in arrays]) if arrays else np.zeros((0, type_.list_size))
    values = pa.array(flat.reshape(-1).astype(type_.value_type.to_pandas_dtype()))
    return pa.FixedSizeListArray.from_arrays(values, type_.list_size)


def to_parquet(samples: list[StoredSample], layout: TargetLayout) -> pa.Table:
    """Return the samples as a Parquet-ready table with `parquet_schema(layout)`."""
    schema = parquet_schema(layout)
    columns: dict[str, Any] = {
        "key": [s.key for s in samples],
        "split": [s.split for s in samples],
        "source_key": [s.source_key for s in samples],
        "generator": [s.generator for s in samples],
        "generator_params": [json.dumps(s.generator_params, sort_keys=True) for s in samples],
        "generator_seed": [s.generator_seed for s in samples],
        "label": [s.label for s in samples],
        "domain": [s.domain for s in samples],
        "png": [_png_bytes(s.image) for s in samples],
    }
    arrays = [pa.array(columns[f.name], type=f.type) for f in schema if f.name in columns]
    arrays.append(_fixed_list([s.logits for s in samples], schema.field("logits").type))
    for spec in layout.layers:
        name = f"act.{spec.name}"
        arrays.append(
            _fixed_list([s.activations[spec.name] for s in samples], schema.field(name).type)
        )
    return pa.Table.from_arrays(arrays, schema=schema)


def from_parquet(table: pa.Table) -> list[StoredSample]:
    """Rebuild the samples of a table written by `to_parquet`."""
    layout = TargetLayout.from_dict(json.loads(table.schema.metadata[b"target_layout"]))
    n = table.num_rows

    def column_arrays(name: str, shape: tuple[int, ...]) -> np.ndarray:
        values = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return values.reshape((n, *shape))

    logits = column_arrays("logits", (layout.num_classes,))
    acts = {s.name: column_arrays(f"act.{s.name}", s.shape) for s in layout.layers}
    rows = table.select(list(_META_FIELDS) + ["png"]).to_pylist()
    samples = []
    for i, row in enumerate(rows):
        row["generator_params"] = json.loads(row["generator_params"])
        png = row.pop("png")
        samples.append(
            StoredSample(
                **row,
                image=_decode_png(png),
                logits=logits[i].copy(),
                activations={
                    name: a[i].astype(spec.dtype, copy=True)
                    for (name, a), spec in zip(acts.items(), layout.layers, strict=True)
                },
            )
        )
    return samples
