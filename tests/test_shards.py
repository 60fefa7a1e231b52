"""Stored sample layout: WebDataset and Parquet round trips, atomic shard writes, manifests."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from safetensors.numpy import load as safetensors_load

from pipeline.writer import ShardWriter, read_done_record
from schemas import SCHEMA_VERSION
from schemas.errors import ShardSetError
from schemas.manifest import Manifest, TeacherFingerprint
from schemas.sample import LayerSpec, StoredSample, TargetLayout, decode_wds, from_parquet

LAYOUT = TargetLayout(
    image_size=8,
    num_classes=4,
    layers=[LayerSpec("_blocks.1", "float16", (5,)), LayerSpec("head.0", "float32", (3,))],
)


def make_sample(i: int, rng: np.random.Generator, split: str = "ood_train") -> StoredSample:
    return StoredSample(
        key=f"train-{i:06d}-v1",
        split=split,
        source_key=f"train-{i:06d}",
        generator="corruption",
        generator_params={"corruption": "fog", "severity": 3},
        generator_seed=int(rng.integers(2**31)),
        label=i % 4,
        domain="hospital_2",
        image=rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8),
        logits=rng.standard_normal(4).astype(np.float32),
        activations={
            "_blocks.1": rng.standard_normal(5).astype(np.float16),
            "head.0": rng.standard_normal(3).astype(np.float32),
        },
    )


def assert_same(a: StoredSample, b: StoredSample) -> None:
    assert a.metadata() == b.metadata()
    assert a.image.dtype == b.image.dtype
    assert np.array_equal(a.image, b.image)
    assert a.logits.dtype == b.logits.dtype
    assert a.logits.tobytes() == b.logits.tobytes()
    assert set(a.activations) == set(b.activations)
    for name in a.activations:
        assert a.activations[name].dtype == b.activations[name].dtype, name
        assert a.activations[name].tobytes() == b.activations[name].tobytes(), name


def test_shard_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    samples = [make_sample(i, rng) for i in range(7)]
    with ShardWriter(tmp_path, "ood_train-00000", "ood_train", LAYOUT) as writer:
        for sample in samples:
            writer.write(sample)
        writer.skip("unreadable_image")

    from_tar = [
        decode_wds(m)
        for m in wds.WebDataset(str(tmp_path / "ood_train-00000.tar"), shardshuffle=False)
    ]
    from_pq = from_parquet(pq.read_table(tmp_path / "ood_train-00000.parquet"))
    assert len(from_tar) == len(from_pq) == len(samples)
    for original, tar_sample, pq_sample in zip(samples, from_tar, from_pq, strict=True):
        assert_same(original, tar_sample)
        assert_same(original, pq_sample)

    info = read_done_record(tmp_path, "ood_train-00000")
    assert info.samples == 7
    assert info.skipped == {"unreadable_image": 1}


def test_parquet_columns_match_wds_members(tmp_path):
    rng = np.random.default_rng(1)
    with ShardWriter(tmp_path, "id_test-00000", "id_test", LAYOUT) as writer:
        writer.write(make_sample(0, rng, split="id_test"))
    members = next(iter(wds.WebDataset(str(tmp_path / "id_test-00000.tar"), shardshuffle=False)))
    columns = pq.read_table(tmp_path / "id_test-00000.parquet").column_names
    tensors = set(safetensors_load(members["targets.safetensors"]))
    assert tensors == {c for c in columns if c == "logits" or c.startswith("act.")}
    meta = json.loads(members["json"])
    assert set(meta) <= set(columns)


def test_writer_leaves_nothing_after_an_error(tmp_path):
    rng = np.random.default_rng(2)
    with pytest.raises(RuntimeError, match="disk"):
        with ShardWriter(tmp_path, "id_train-00000", "id_train", LAYOUT) as writer:
            writer.write(make_sample(0, rng, split="id_train"))
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    assert read_done_record(tmp_path, "id_train-00000") is None


def test_writer_rejects_sample_with_wrong_layout(tmp_path):
    rng = np.random.default_rng(3)
    bad = make_sample(0, rng)
    bad.activations["_blocks.1"] = bad.activations["_blocks.1"].astype(np.float32)
    with pytest.raises(
        ShardSetError, match=r"activation '_blocks.1' is float32 \(5,\), expected float16"
    ):
        with ShardWriter(tmp_path, "ood_train-00000", "ood_train", LAYOUT) as writer:
            writer.write(bad)


def test_done_record_ignored_when_file_changed(tmp_path):
    rng = np.random.default_rng(4)
    with ShardWriter(tmp_path, "ood_train-00000", "ood_train", LAYOUT) as writer:
        writer.write(make_sample(0, rng))
    with open(tmp_path / "ood_train-00000.tar", "ab") as f:
        f.write(b"\0" * 512)
    assert read_done_record(tmp_path, "ood_train-00000") is None


def _manifest(shards) -> Manifest:
    return Manifest(
        schema_version=SCHEMA_VERSION,
        package_version="0",
        git_commit="x",
        created_at="now",
        teacher=TeacherFingerprint("arch", "a" * 64, "linear_probe", "b" * 64),
        dataset={"name": "d"},
        generator_config={},
        layout=LAYOUT,
        classes=list("abcd"),
        shards=shards,
    )


def test_manifest_round_trip_and_verify(tmp_path):
    rng = np.random.default_rng(5)
    with ShardWriter(tmp_path, "ood_train-00000", "ood_train", LAYOUT) as writer:
        writer.write(make_sample(0, rng))
    manifest = _manifest([read_done_record(tmp_path, "ood_train-00000")])
    manifest.write(tmp_path)
    loaded = Manifest.read(tmp_path)
    assert loaded.to_dict() == manifest.to_dict()
    loaded.verify(tmp_path)

    data = bytearray((tmp_path / "ood_train-00000.parquet").read_bytes())
    data[100] ^= 0xFF
    (tmp_path / "ood_train-00000.parquet").write_bytes(bytes(data))
    with pytest.raises(ShardSetError, match="ood_train-00000.parquet: sha256 differs"):
        loaded.verify(tmp_path)


def test_manifest_rejects_other_schema_version(tmp_path):
    data = _manifest([]).to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ShardSetError, match="schema_version"):
        Manifest.read(tmp_path)


def test_missing_manifest_says_how_to_fix(tmp_path):
    with pytest.raises(ShardSetError, match="run `robustkd precompute`"):
        Manifest.read(tmp_path)


def test_plan_change_allowed_only_before_any_shard_finished(tmp_path):
    from pipeline.plan import Plan
    from pipeline.precompute import _check_plan_file

    _check_plan_file(tmp_path, Plan(shards=[], fingerprint="a" * 64))
    (tmp_path / "teacher_head.safetensors").write_bytes(b"stale")
    _check_plan_file(tmp_path, Plan(shards=[], fingerprint="b" * 64))  # nothing finished yet
    assert not (tmp_path / "teacher_head.safetensors").exists()
    assert json.loads((tmp_path / "plan.json").read_text())["fingerprint"] == "b" * 64

    (tmp_path / "id_train-00000.done.json").write_text("{}")
    with pytest.raises(ShardSetError, match="holds shards from a different config"):
        _check_plan_file(tmp_path, Plan(shards=[], fingerprint="c" * 64))


def test_long_keys_round_trip_in_gnu_tar(tmp_path):
    # Member names longer than 100 characters need GNU long-name records; the plain ustar
    # format would reject them.
    rng = np.random.default_rng(5)
    sample = make_sample(0, rng)
    sample.key = "camelyon17-hospital_2-patient_077-node_4-" + "x" * 90
    with ShardWriter(tmp_path, "ood_train-00000", "ood_train", LAYOUT) as writer:
        writer.write(sample)
    members = list(wds.WebDataset(str(tmp_path / "ood_train-00000.tar"), shardshuffle=False))
    assert len(members) == 1
    assert_same(decode_wds(members[0]), sample)


def test_writer_encodes_each_png_once(tmp_path, monkeypatch):
    import schemas.sample as sample_module

    calls = []
    encode = sample_module._png_bytes
    monkeypatch.setattr(sample_module, "_png_bytes", lambda image: calls.append(1) or encode(image))
    rng = np.random.default_rng(6)
    with ShardWriter(tmp_path, "ood_train-00000", "ood_train", LAYOUT) as writer:
        for i in range(3):
            writer.write(make_sample(i, rng))
    assert len(calls) == 3
    tar_sample = decode_wds(
        next(iter(wds.WebDataset(str(tmp_path / "ood_train-00000.tar"), shardshuffle=False)))
    )
    pq_sample = from_parquet(pq.read_table(tmp_path / "ood_train-00000.parquet"))[0]
    assert_same(tar_sample, pq_sample)
