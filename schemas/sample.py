"""The stored sample: one layout, written as WebDataset members and as Parquet columns.

A sample contains its key and split, the source sample it was generated from with the generator's
name, parameters and seed, its label and domain, the image, and the teacher's targets (logits and
one activation per tapped layer). The same names are used on both sides:

| field                           | WebDataset member              | Parquet column  |
|---------------------------------|--------------------------------|-----------------|
| metadata                        | `<key>.json`                   | one column each |
| image (uint8)                   | `<key>.png`                    | `png` (binary)  |
| teacher targets                 | `<key>.targets.safetensors`    | one per tensor  |

The targets member is a safetensors file with one tensor per target field, named like the
Parquet columns:

| target field                    | tensor / Parquet column |
|---------------------------------|-------------------------|
| logits (float32 or float16)     | `logits`                |
| top-k logits: classes, count    | `topk.index`            |
| top-k logits: values, rest      | `topk.logits`           |
| activation of layer L           | `act.L`                 |
| int8 row scales of layer L      | `scale.L`               |

`target_fields(layout)` lists the stored arrays of a layout with their dtype and shape. Stored
activations are float32, float16, bfloat16 bits (uint16, because numpy has no bfloat16) or int8
codes with per-row scales (`schemas.codecs`). Decoding always returns full float32 logits of
shape (num_classes,) and float32 activations (float16 ones stay float16), so the trainer needs
no layout to use them; a WebDataset reader tells bfloat16 bits and int8 codes apart by their
tensor dtype.

One member for all targets, rather than one per array, saves a 512-byte tar header and padding
per array. A safetensors file also decodes faster: for the demo's four pooled arrays, 13 us
against 144 us as `.npy` files (one timing of 2,000 decodes on a 2-core CPU, an estimate).
Nothing is pickled: the tensors go through safetensors and fixed-size Parquet lists whose dtype
and shape come from the `TargetLayout` in the manifest.
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
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from schemas import codecs
from schemas.errors import ShardSetError

__all__ = [
    "KEY_PATTERN",
    "LayerSpec",
    "SPLITS",
    "TARGETS_MEMBER",
    "EncodedSample",
    "PNG_COMPRESS_LEVEL",
    "StoredSample",
    "TargetLayout",
    "decode_targets",
    "decode_wds",
    "decoded_dtype",
    "encode_sample",
    "encode_targets",
    "encode_wds",
    "from_parquet",
    "parquet_table",
    "target_fields",
    "to_parquet",
    "wds_members",
]

TARGETS_MEMBER = "targets.safetensors"
"""WebDataset member that contains every target tensor of a sample."""

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


STORED_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "uint16", "int8": "int8"}
"""Activation storage dtype -> NumPy dtype of the stored array."""


def decoded_dtype(storage_dtype: str) -> np.dtype:
    """Return the dtype of a decoded activation: float16 stays float16, the rest are float32."""
    return np.dtype("float16" if storage_dtype == "float16" else "float32")


@dataclass(frozen=True)
class LayerSpec:
    """One stored activation: the tapped module's name, how it was reduced, and how it is stored."""

    name: str
    dtype: str
    """Storage dtype: `float32`, `float16`, `bfloat16` or `int8`."""
    shape: tuple[int, ...]
    """Shape of one sample's decoded activation: (C,) when pooled, (T, C) for tokens, (C, H, W)
    for feature maps; C is the projected width when a projection is set."""
    reduce: str = "mean"
    """`mean` over tokens or positions, the `cls` token, or `full` (the whole output)."""
    projection_from: int | None = None
    """Channels before the random projection; None when the channels are stored unprojected."""
    projection_seed: int = 0
    """Seed of the projection matrix (`shardstore.targets.projection_matrix`)."""

    def __post_init__(self):
        if self.dtype not in STORED_DTYPES:
            raise ShardSetError(
                f"layer {self.name!r}: storage dtype {self.dtype!r} is not one of "
                f"{', '.join(STORED_DTYPES)}"
            )


@dataclass
class TargetLayout:
    """Dtypes and shapes of every stored array; recorded once in the manifest."""

    image_size: int
    num_classes: int
    layers: list[LayerSpec] = field(default_factory=list)
    logits: str = "float32"
    """Stored logits: `float32`, `float16` or `topk`."""
    top_k: int | None = None
    """Classes kept when `logits` is `topk`."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "layers": [{**asdict(s), "shape": list(s.shape)} for s in self.layers],
            "logits": self.logits,
            "top_k": self.top_k,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetLayout:
        layers = [LayerSpec(**{**d, "shape": tuple(d["shape"])}) for d in data["layers"]]
        return cls(
            image_size=data["image_size"],
            num_classes=data["num_classes"],
            layers=layers,
            logits=data.get("logits", "float32"),
            top_k=data.get("top_k"),
        )

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


PNG_COMPRESS_LEVEL = 1
"""zlib level of stored PNGs. PNG is lossless at every level. On 256 Fashion-MNIST images at
64 px, level 1 took 0.17 ms and 2897 bytes per image, Pillow's default level 6 took 0.36 ms and
2971 bytes (one timing on a 2-core CPU, an estimate)."""


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
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
        expected = decoded_dtype(spec.dtype)
        if act is None:
            problems.append(f"activation {spec.name!r} is missing")
        elif act.dtype != expected or act.shape != spec.shape:
            problems.append(
                f"activation {spec.name!r} is {act.dtype} {act.shape}, "
                f"expected {expected} {spec.shape}"
            )
    if problems:
        raise ShardSetError(
            f"sample {sample.key!r} does not match the layout: " + "; ".join(problems)
        )


def target_fields(layout: TargetLayout) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """List the stored target arrays of a layout as (field name, stored dtype, shape).

    A field name is a Parquet column and a tensor of the `targets.safetensors` member.
    """
    if layout.logits == "topk":
        k = layout.top_k + 1
        fields = [
            ("topk.index", np.dtype("int32"), (k,)),
            ("topk.logits", np.dtype("float32"), (k,)),
        ]
    else:
        fields = [("logits", np.dtype(layout.logits), (layout.num_classes,))]
    for spec in layout.layers:
        fields.append((f"act.{spec.name}", np.dtype(STORED_DTYPES[spec.dtype]), spec.shape))
        if spec.dtype == "int8":
            rows = codecs.quantization_rows(spec.shape)
            fields.append((f"scale.{spec.name}", np.dtype("float32"), (rows,)))
    return fields


def _plain_layout(sample: StoredSample) -> TargetLayout:
    """Return the layout of a sample stored without options: float32 logits, raw activations."""
    layers = []
    for name, array in sample.activations.items():
        if array.dtype not in (np.float16, np.float32):
            raise ShardSetError(
                f"activation {name!r} is {array.dtype}; without a layout only float16 and "
                "float32 activations can be stored, so pass the manifest's layout"
            )
        layers.append(LayerSpec(name, str(array.dtype), array.shape))
    return TargetLayout(
        image_size=sample.image.shape[0], num_classes=len(sample.logits), layers=layers
    )


def encode_targets(sample: StoredSample, layout: TargetLayout) -> dict[str, np.ndarray]:
    """Return the stored target arrays of `sample` by field name (see `target_fields`)."""
    arrays: dict[str, np.ndarray] = {}
    if layout.logits == "topk":
        arrays["topk.index"], arrays["topk.logits"] = codecs.topk_encode(
            sample.logits, layout.top_k
        )
    else:
        arrays["logits"] = sample.logits.astype(layout.logits)
    for spec in layout.layers:
        values = sample.activations[spec.name]
        if spec.dtype == "bfloat16":
            arrays[f"act.{spec.name}"] = codecs.bfloat16_encode(values)
        elif spec.dtype == "int8":
            arrays[f"act.{spec.name}"], arrays[f"scale.{spec.name}"] = codecs.int8_encode(values)
        else:
            arrays[f"act.{spec.name}"] = values.astype(spec.dtype)
    return arrays


def decode_targets(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Return (float32 logits, activations by layer) from stored target arrays by field name.

    Activations stored as bfloat16 bits (uint16) or int8 codes come back as float32.
    """
    if "logits" in arrays:
        logits = arrays["logits"].astype(np.float32)
    else:
        logits = codecs.topk_decode(arrays["topk.index"], arrays["topk.logits"])
    activations = {}
    for name, array in arrays.items():
        if not name.startswith("act."):
            continue
        layer = name[len("act.") :]
        if array.dtype == np.uint16:
            activations[layer] = codecs.bfloat16_decode(array)
        elif array.dtype == np.int8:
            activations[layer] = codecs.int8_decode(array, arrays[f"scale.{layer}"])
        else:
            activations[layer] = array
    return logits, activations


@dataclass
class EncodedSample:
    """A stored sample in its on-disk encoding, shared by its tar members and its Parquet row."""

    metadata: dict[str, Any]
    """`StoredSample.metadata()`: key, split, source, generator, seed, label and domain."""
    png: bytes
    targets: dict[str, np.ndarray]
    """Stored target arrays by field name (`target_fields`)."""


def encode_sample(sample: StoredSample, layout: TargetLayout, check: bool = True) -> EncodedSample:
    """Encode the image and targets of `sample` once; with `check`, validate it first."""
    if check:
        check_sample(sample, layout)
    return EncodedSample(
        sample.metadata(), _png_bytes(sample.image), encode_targets(sample, layout)
    )


def wds_members(encoded: EncodedSample) -> dict[str, Any]:
    """Return the WebDataset member dict (`__key__` plus one entry per member)."""
    members: dict[str, Any] = {
        "__key__": encoded.metadata["key"],
        "json": json.dumps(encoded.metadata, sort_keys=True).encode(),
        "png": encoded.png,
    }
    members[TARGETS_MEMBER] = safetensors_save(
        {name: np.ascontiguousarray(array) for name, array in encoded.targets.items()}
    )
    return members


def encode_wds(sample: StoredSample, layout: TargetLayout | None = None) -> dict[str, Any]:
    """Return the WebDataset member dict of `sample` (`__key__` plus one entry per member).

    Without a layout, logits are stored as float32 and activations in their own dtype.
    """
    layout = layout or _plain_layout(sample)
    return wds_members(encode_sample(sample, layout, check=False))


def decode_wds(members: dict[str, Any]) -> StoredSample:
    """Rebuild a `StoredSample` from raw WebDataset members (bytes values)."""
    meta = json.loads(members["json"])
    if TARGETS_MEMBER not in members:
        found = sorted(m for m in members if not m.startswith("__"))
        raise ShardSetError(
            f"sample {meta.get('key')!r} has no {TARGETS_MEMBER} member (members: {found}); "
            "it was written with an older schema version, so precompute the shard set again"
        )
    logits, activations = decode_targets(safetensors_load(members[TARGETS_MEMBER]))
    return StoredSample(
        **meta,
        image=_decode_png(members["png"]),
        logits=logits,
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
    ]
    for name, dtype, shape in target_fields(layout):
        size = int(np.prod(shape))
        fields.append(pa.field(name, pa.list_(pa.from_numpy_dtype(dtype), size)))
    return pa.schema(fields, metadata={"target_layout": json.dumps(layout.to_dict())})


def _fixed_list(arrays: list[np.ndarray], type_: pa.DataType) -> pa.Array:
    dtype = type_.value_type.to_pandas_dtype()
    if arrays:
        flat = np.stack([a.reshape(-1) for a in arrays])
    else:
        flat = np.zeros((0, type_.list_size), dtype=dtype)
    values = pa.array(flat.reshape(-1).astype(dtype))
    return pa.FixedSizeListArray.from_arrays(values, type_.list_size)


def to_parquet(samples: list[StoredSample], layout: TargetLayout) -> pa.Table:
    """Return the samples as a Parquet-ready table with `parquet_schema(layout)`."""
    encoded = [encode_sample(sample, layout, check=False) for sample in samples]
    return parquet_table(encoded, layout)


def parquet_table(encoded: list[EncodedSample], layout: TargetLayout) -> pa.Table:
    """Return encoded samples as a table with `parquet_schema(layout)`."""
    schema = parquet_schema(layout)
    columns: dict[str, list] = {name: [e.metadata[name] for e in encoded] for name in _META_FIELDS}
    columns["generator_params"] = [
        json.dumps(params, sort_keys=True) for params in columns["generator_params"]
    ]
    columns["png"] = [e.png for e in encoded]
    arrays = [pa.array(columns[f.name], type=f.type) for f in schema if f.name in columns]
    for name, _, _ in target_fields(layout):
        arrays.append(_fixed_list([e.targets[name] for e in encoded], schema.field(name).type))
    return pa.Table.from_arrays(arrays, schema=schema)


def from_parquet(table: pa.Table) -> list[StoredSample]:
    """Rebuild the samples of a table written by `to_parquet`."""
    layout = TargetLayout.from_dict(json.loads(table.schema.metadata[b"target_layout"]))
    n = table.num_rows
    columns = {}
    for name, dtype, shape in target_fields(layout):
        values = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        columns[name] = values.astype(dtype, copy=False).reshape((n, *shape))
    rows = table.select(list(_META_FIELDS) + ["png"]).to_pylist()
    samples = []
    for i, row in enumerate(rows):
        row["generator_params"] = json.loads(row["generator_params"])
        png = row.pop("png")
        logits, activations = decode_targets({name: a[i].copy() for name, a in columns.items()})
        samples.append(
            StoredSample(**row, image=_decode_png(png), logits=logits, activations=activations)
        )
    return samples
