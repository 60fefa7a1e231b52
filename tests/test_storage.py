"""Compact target storage: codecs, each layout option in WebDataset and Parquet, write errors."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from conftest import REPO, tiny_experiment
from safetensors.numpy import load as safetensors_load

from backbones.taps import pool_activation
from pipeline import writer as writer_module
from pipeline.writer import ShardWriter, check_storage_record, read_done_record
from schemas import codecs
from schemas.config import ExperimentConfig, StorageConfig, config_from_dict
from schemas.errors import ConfigError, ShardSetError
from schemas.sample import (
    LayerSpec,
    StoredSample,
    TargetLayout,
    check_sample,
    decode_wds,
    decoded_dtype,
    encode_wds,
    from_parquet,
    to_parquet,
)
from shardstore.targets import layer_spec, projection_matrix, reduce_activation


def test_bfloat16_matches_torch_rounding():
    values = np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 50
    values[:4] = [0.0, -0.0, 1e-30, 3.0e38]
    bits = codecs.bfloat16_encode(values)
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy()
    assert bits.dtype == np.uint16
    assert np.array_equal(bits, expected.view(np.uint16))
    decoded = codecs.bfloat16_decode(bits)
    assert np.array_equal(decoded, torch.from_numpy(values).to(torch.bfloat16).float().numpy())


def test_int8_error_within_half_step():
    values = np.random.default_rng(1).standard_normal((7, 33)).astype(np.float32)
    values[3] *= 100  # one row much larger than the others keeps its own scale
    values[5] = 0.0
    q, scale = codecs.int8_encode(values)
    assert q.dtype == np.int8
    assert q.shape == values.shape
    assert scale.shape == (7,)
    np.testing.assert_allclose(scale[3], np.abs(values[3]).max() / 127, rtol=1e-6)
    decoded = codecs.int8_decode(q, scale)
    assert np.all(np.abs(decoded - values) <= scale[:, None] / 2 + 1e-7)
    assert not decoded[5].any()


def test_int8_rows_follow_the_first_axis():
    assert codecs.quantization_rows((320,)) == 1
    assert codecs.quantization_rows((197, 768)) == 197
    assert codecs.quantization_rows((40, 8, 8)) == 40


def test_int8_rejects_non_finite_values():
    with pytest.raises(ShardSetError, match="activation_dtype: float32"):
        codecs.int8_encode(np.array([1.0, np.nan], dtype=np.float32))


def test_topk_keeps_top_probabilities_and_rest_mass():
    logits = np.array([2.0, -1.0, 0.5, 3.0, -2.0, 0.0], dtype=np.float32)
    index, values = codecs.topk_encode(logits, 2)
    assert index.tolist() == [3, 0, 6]
    # Hand computation: the rest logit is log(mean(exp([-1, 0.5, -2, 0]))).
    rest = np.log(np.mean(np.exp([-1.0, 0.5, -2.0, 0.0])))
    np.testing.assert_allclose(values, [3.0, 2.0, rest], rtol=1e-6)

    decoded = codecs.topk_decode(index, values)
    assert decoded.dtype == np.float32
    assert decoded.shape == (6,)
    p_full = np.exp(logits - np.logaddexp.reduce(logits))
    p_decoded = np.exp(decoded - np.logaddexp.reduce(decoded))
    np.testing.assert_allclose(p_decoded[[3, 0]], p_full[[3, 0]], rtol=1e-5)
    np.testing.assert_allclose(p_decoded[[1, 2, 4, 5]], p_full[[1, 2, 4, 5]].mean(), rtol=1e-5)


def test_topk_rejects_k_not_below_class_count():
    with pytest.raises(ShardSetError, match="top_k: 6 must be between 1 and 5"):
        codecs.topk_encode(np.zeros(6, dtype=np.float32), 6)


LAYOUTS = {
    "fp16_logits_bf16_tokens": TargetLayout(
        8, 10, [LayerSpec("blk.1", "bfloat16", (5, 6), reduce="full")], logits="float16"
    ),
    "topk_int8_maps": TargetLayout(
        8, 10, [LayerSpec("blk.2", "int8", (4, 3, 3), reduce="full")], logits="topk", top_k=3
    ),
    "float32_mixed": TargetLayout(
        8,
        10,
        [LayerSpec("a", "float32", (6,)), LayerSpec("b.c", "int8", (7,), projection_from=9)],
    ),
}


def make_sample(layout: TargetLayout, i: int, rng) -> StoredSample:
    return StoredSample(
        key=f"s-{i:04d}",
        split="ood_train",
        source_key=f"s-{i:04d}",
        generator="corruption",
        generator_params={"corruption": "fog", "severity": 2},
        generator_seed=i,
        label=i % 10,
        domain="d",
        image=rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8),
        logits=(rng.standard_normal(10) * 4).astype(np.float32),
        activations={
            s.name: rng.standard_normal(s.shape).astype(decoded_dtype(s.dtype))
            for s in layout.layers
        },
    )


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_round_trip_matches_in_tar_and_parquet(tmp_path, name):
    layout = LAYOUTS[name]
    rng = np.random.default_rng(2)
    samples = [make_sample(layout, i, rng) for i in range(5)]
    with ShardWriter(tmp_path, "ood_train-00000", "ood_train", layout) as writer:
        for sample in samples:
            writer.write(sample)
    from_tar = [
        decode_wds(m)
        for m in wds.WebDataset(str(tmp_path / "ood_train-00000.tar"), shardshuffle=False)
    ]
    from_pq = from_parquet(pq.read_table(tmp_path / "ood_train-00000.parquet"))
    for original, tar_sample, pq_sample in zip(samples, from_tar, from_pq, strict=True):
        assert tar_sample.logits.dtype == np.float32
        assert tar_sample.logits.shape == (10,)
        assert tar_sample.logits.tobytes() == pq_sample.logits.tobytes()
        for spec in layout.layers:
            got = tar_sample.activations[spec.name]
            assert got.dtype == decoded_dtype(spec.dtype), spec.name
            assert got.tobytes() == pq_sample.activations[spec.name].tobytes(), spec.name
            np.testing.assert_allclose(got, original.activations[spec.name], atol=0.05)
        if layout.logits == "topk":
            top = np.argsort(-original.logits)[:3]
            assert np.array_equal(tar_sample.logits[top], original.logits[top])
        else:
            np.testing.assert_allclose(tar_sample.logits, original.logits, rtol=1e-3)


def test_member_names_follow_the_layout():
    layout = LAYOUTS["topk_int8_maps"]
    members = encode_wds(make_sample(layout, 0, np.random.default_rng(3)), layout)
    assert sorted(members) == ["__key__", "json", "png", "targets.safetensors"]
    arrays = sorted(safetensors_load(members["targets.safetensors"]))
    assert arrays == ["act.blk.2", "scale.blk.2", "topk.index", "topk.logits"]
    columns = set(to_parquet([], layout).column_names)
    assert set(arrays) <= columns


def test_int8_layer_takes_float32_values():
    layout = LAYOUTS["topk_int8_maps"]
    sample = make_sample(layout, 0, np.random.default_rng(4))
    check_sample(sample, layout)
    sample.activations["blk.2"] = sample.activations["blk.2"].astype(np.int8)
    with pytest.raises(ShardSetError, match=r"'blk.2' is int8 \(4, 3, 3\), expected float32"):
        check_sample(sample, layout)


def test_unknown_storage_dtype_is_rejected():
    with pytest.raises(ShardSetError, match="'int4' is not one of float32, float16"):
        LayerSpec("x", "int4", (3,))


@pytest.mark.parametrize(
    ("storage", "output_shape", "stored"),
    [
        ({}, (197, 768), (768,)),
        ({}, (40, 8, 8), (40,)),
        ({"activations": "cls"}, (197, 768), (768,)),
        ({"activations": "full"}, (197, 768), (197, 768)),
        ({"activations": "full"}, (40, 8, 8), (40, 8, 8)),
        ({"activations": "full", "projection_dim": 64}, (197, 768), (197, 64)),
        ({"activations": "full", "projection_dim": 16}, (40, 8, 8), (16, 8, 8)),
        ({"projection_dim": 32}, (197, 768), (32,)),
    ],
)
def test_layer_spec_shapes(storage, output_shape, stored):
    spec = layer_spec("tap", output_shape, StorageConfig(**storage))
    assert spec.shape == stored
    output = torch.randn(2, *output_shape)
    assert tuple(reduce_activation(output, spec).shape) == (2, *stored)


def test_cls_on_feature_maps_names_the_option():
    with pytest.raises(ConfigError, match="'cls' needs token outputs"):
        layer_spec("_blocks.4", (40, 8, 8), StorageConfig(activations="cls"))


def test_mean_reduction_equals_trainer_pooling():
    spec = layer_spec("tap", (40, 8, 8), StorageConfig())
    output = torch.randn(3, 40, 8, 8)
    assert torch.equal(reduce_activation(output, spec), pool_activation(output))
    tokens = torch.randn(3, 17, 12)
    spec = layer_spec("tap", (17, 12), StorageConfig())
    assert torch.equal(reduce_activation(tokens, spec), pool_activation(tokens))


def test_projection_keeps_mean_square():
    first = projection_matrix(768, 256, 0)
    assert np.array_equal(first, projection_matrix(768, 256, 0))
    assert not np.array_equal(first, projection_matrix(768, 256, 1))
    x = np.random.default_rng(5).standard_normal((200, 768)).astype(np.float32)
    ratio = ((x @ first) ** 2).mean(axis=1) / (x**2).mean(axis=1)
    assert abs(ratio.mean() - 1.0) < 0.05


def test_projection_skips_narrow_layers():
    spec = layer_spec("_blocks.4", (40, 8, 8), StorageConfig(activations="full", projection_dim=64))
    assert spec.shape == (40, 8, 8)
    assert spec.projection_from is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"precompute": {"storage": {"top_k": 0}}}, "precompute.storage.top_k: 0 must be >= 1"),
        (
            {"precompute": {"storage": {"projection_dim": 0}}},
            "precompute.storage.projection_dim: 0 must be >= 1",
        ),
        (
            {"precompute": {"storage": {"activation_dtype": "int4"}}},
            "precompute.storage.activation_dtype: 'int4' is not one of",
        ),
        ({"shard_set": "not-an-id"}, "shard_set: 'not-an-id' is not a shard-set id"),
    ],
)
def test_storage_config_validation(tmp_path, section, message):
    data = tiny_experiment(tmp_path, tmp_path)
    for key, value in section.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=message):
        config_from_dict(ExperimentConfig, data)


def test_folder_with_other_storage_is_rejected(tmp_path):
    check_storage_record(tmp_path, {"activation_dtype": "float16"})
    check_storage_record(tmp_path, {"activation_dtype": "float16"})
    # Before any shard is finished, changed options simply replace the record.
    check_storage_record(tmp_path, {"activation_dtype": "bfloat16"})
    (tmp_path / "id_train-00000.done.json").write_text("{}")
    with pytest.raises(ShardSetError, match="set precompute.output to a new folder"):
        check_storage_record(tmp_path, {"activation_dtype": "int8"})


def test_full_disk_while_finishing_leaves_no_shard(tmp_path, monkeypatch):
    layout = LAYOUTS["topk_int8_maps"]

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_module.pq, "write_table", no_space)
    with pytest.raises(OSError, match="No space left"):
        with ShardWriter(tmp_path, "ood_train-00000", "ood_train", layout) as writer:
            writer.write(make_sample(layout, 0, np.random.default_rng(6)))
    assert list(tmp_path.iterdir()) == []
    assert read_done_record(tmp_path, "ood_train-00000") is None


WRITE_WITH_SIZE_LIMIT = textwrap.dedent(
    """
    import resource, signal, sys
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_storage import LAYOUTS, make_sample
    from pipeline.writer import ShardWriter

    # Past the limit, write() fails with EFBIG instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
    layout = LAYOUTS["fp16_logits_bf16_tokens"]
    rng = np.random.default_rng(0)
    try:
        with ShardWriter(sys.argv[1], "ood_train-00000", "ood_train", layout) as writer:
            for i in range(200):
                writer.write(make_sample(layout, i, rng))
    except OSError as exc:
        print("write failed:", exc)
        sys.exit(3)
    """
)


def test_file_size_limit_leaves_no_shard(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", WRITE_WITH_SIZE_LIMIT, str(tmp_path), str(REPO / "tests")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "File too large" in result.stdout
    assert list(tmp_path.iterdir()) == []
