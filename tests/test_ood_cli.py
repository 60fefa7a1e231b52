"""Tests of `robustkd ood preview` and `robustkd ood regenerate` on a shard set written here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pipeline.datasets import get_reader, load_image, prepare_image
from pipeline.ood import build_generator
from pipeline.ood.regenerate import regenerate_sample
from robustkd.cli import main
from schemas import SCHEMA_VERSION
from schemas.errors import RobustKDError
from schemas.manifest import Manifest, ShardInfo, TeacherFingerprint
from schemas.sample import StoredSample, TargetLayout, encode_wds
from tests.test_ood_adversarial import (
    TinyTeacher,
    one_torch_thread,  # noqa: F401
)

IMAGE_SIZE = 32
TRAIN_GENERATORS = [
    {
        "name": "corruption",
        "weight": 1.0,
        "params": {"corruptions": ["glass_blur", "fog", "snow"], "severities": [2, 5]},
    },
    {"name": "augmentation", "weight": 1.0, "params": {"policy": "randaugment", "num_ops": 1}},
    {"name": "augmentation", "weight": 1.0, "params": {"policy": "augmix"}},
    {"name": "adversarial", "weight": 1.0, "params": {"attack": "pgd_linf", "steps": 2}},
]


def stored(
    key: str,
    source_key: str,
    generator: str,
    params: dict,
    seed: int,
    image: np.ndarray,
    label: int = 0,
) -> StoredSample:
    return StoredSample(
        key=key,
        split="ood_train",
        source_key=source_key,
        generator=generator,
        generator_params=params,
        generator_seed=seed,
        label=label,
        domain="original",
        image=image,
        logits=np.zeros(10, np.float32),
        activations={},
    )


def build_samples(fashion_root: Path) -> list[StoredSample]:
    """One sample per generator kind, made the way precompute makes them."""
    records = get_reader("fashion-mnist", str(fashion_root)).records("train")[:3]
    sources = {r.key: prepare_image(load_image(r), IMAGE_SIZE) for r in records}
    keys = list(sources)
    samples = [stored(keys[0], keys[0], "identity", {}, 0, sources[keys[0]])]
    for index, spec in enumerate(TRAIN_GENERATORS[:3]):
        source_key = keys[index % 3]
        view, params = build_generator(spec["name"], spec["params"]).generate(
            sources[source_key], 100 + index
        )
        samples.append(
            stored(f"{source_key}-v{index}", source_key, spec["name"], params, 100 + index, view)
        )
    grid_params = {"corruption": "frost", "severity": 3, "family": "weather", "seen": False}
    grid_view = build_generator("corruption", {}).apply(sources[keys[1]], grid_params, 7)
    samples.append(stored(f"{keys[1]}-frost-s3", keys[1], "corruption", grid_params, 7, grid_view))

    adversarial = build_generator("adversarial", TRAIN_GENERATORS[3]["params"])
    views, params_list = adversarial.generate_batch(
        TinyTeacher(), sources[keys[2]][None], np.array([2]), [55]
    )
    samples.append(stored(f"{keys[2]}-v3", keys[2], "adversarial", params_list[0], 55, views[0], 2))
    return samples


def write_shard_set(folder: Path, fashion_root: Path, samples: list[StoredSample]) -> None:
    folder.mkdir(parents=True)
    tar = folder / "ood_train-000000.tar"
    with wds.TarWriter(str(tar)) as writer:
        for sample in samples:
            writer.write(encode_wds(sample))
    data = tar.read_bytes()
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        package_version="test",
        git_commit="test",
        created_at="2026-01-01T00:00:00+00:00",
        teacher=TeacherFingerprint("tiny", "0" * 64, "own", "0" * 64),
        dataset={
            "name": "fashion-mnist",
            "fingerprint": "test",
            "metric": "accuracy",
            "config": {
                "name": "fashion-mnist",
                "root": str(fashion_root),
                "options": {},
                "image_size": IMAGE_SIZE,
            },
        },
        generator_config={"views_per_image": 1, "seed": 0, "train": TRAIN_GENERATORS},
        layout=TargetLayout(image_size=IMAGE_SIZE, num_classes=10),
        classes=[str(i) for i in range(10)],
        shards=[
            ShardInfo(
                "ood_train",
                tar.name,
                "",
                len(samples),
                len(data),
                hashlib.sha256(data).hexdigest(),
                0,
                "",
            )
        ],
    )
    manifest.write(folder)


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory, fashion_root):
    folder = tmp_path_factory.mktemp("shards") / "set"
    samples = build_samples(fashion_root)
    tampered = stored(
        "tampered",
        samples[1].source_key,
        samples[1].generator,
        samples[1].generator_params,
        samples[1].generator_seed,
        255 - samples[1].image,
    )
    write_shard_set(folder, fashion_root, [*samples, tampered])
    return folder, samples


def test_regenerate_every_generator_bit_exact(shard_set):
    folder, samples = shard_set
    for sample in samples:
        teacher = TinyTeacher() if sample.generator == "adversarial" else None
        result = regenerate_sample(folder, sample.key, teacher=teacher)
        assert result.image.tobytes() == sample.image.tobytes(), sample.key
        assert result.matches


def test_regenerate_augmix_under_randaugment_config(shard_set):
    # The first "augmentation" entry is RandAugment; the AugMix view must still rebuild from
    # its own recorded params.
    folder, samples = shard_set
    augmix = next(s for s in samples if s.generator_params.get("policy") == "augmix")
    result = regenerate_sample(folder, augmix.key)
    assert result.matches
    assert result.generator_params["policy"] == "randaugment"


def test_regenerate_cli_writes_png(shard_set, tmp_path):
    folder, samples = shard_set
    out = tmp_path / "view.png"
    assert (
        main(["ood", "regenerate", samples[1].key, "--shards", str(folder), "--out", str(out)]) == 0
    )
    assert np.array_equal(np.asarray(Image.open(out)), samples[1].image)


def test_regenerate_cli_reports_mismatch(shard_set, tmp_path, capsys):
    folder, _ = shard_set
    out = tmp_path / "tampered.png"
    assert main(["ood", "regenerate", "tampered", "--shards", str(folder), "--out", str(out)]) == 2
    assert "does not match the stored image" in capsys.readouterr().err
    assert out.is_file()


def test_regenerate_errors(shard_set):
    folder, samples = shard_set
    with pytest.raises(RobustKDError, match="'no-such-key' is not in any shard"):
        regenerate_sample(folder, "no-such-key")
    adversarial = next(s for s in samples if s.generator == "adversarial")
    with pytest.raises(RobustKDError, match="needs the teacher; pass the experiment config"):
        regenerate_sample(folder, adversarial.key)


def test_preview_cli_layout(tmp_path):
    out = tmp_path / "sheet" / "preview.png"
    argv = [
        "ood",
        "preview",
        "--out",
        str(out),
        "--count",
        "2",
        "--size",
        "40",
        "--corruptions",
        "fog",
        "glass_blur",
        "--severities",
        "1",
        "5",
        "--generator",
        'augmentation:{"policy": "trivialaugment"}',
        "--generator",
        'adversarial:{"attack": "fgsm"}',
    ]
    assert main(argv) == 0
    sheet = np.asarray(Image.open(out))
    # Rows: clean, fog, glass_blur, augmentation (adversarial is skipped: it needs the teacher).
    assert sheet.shape[0] == 4 + 4 * (14 + 40 + 4)
    assert sheet.shape[2] == 3


def test_preview_cli_from_image_folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        pixels = np.full((50, 70, 3), 60 * index, np.uint8)
        Image.fromarray(pixels).save(images / f"{index}.png")
    out = tmp_path / "preview.png"
    assert (
        main(
            [
                "ood",
                "preview",
                "--out",
                str(out),
                "--images",
                str(images),
                "--count",
                "3",
                "--size",
                "32",
                "--corruptions",
                "contrast",
                "--severities",
                "3",
            ]
        )
        == 0
    )
    sheet = np.asarray(Image.open(out))
    assert sheet.shape[0] == 4 + 2 * (14 + 32 + 4)
    assert json.dumps(sheet.shape)  # a readable PNG


def test_preview_rejects_bad_arguments(tmp_path, capsys):
    out = tmp_path / "p.png"
    assert main(["ood", "preview", "--out", str(out), "--count", "0"]) == 2
    assert "--count 0" in capsys.readouterr().err
    assert main(["ood", "preview", "--out", str(out), "--corruptions", "rain"]) == 2
    assert "'rain' is unknown" in capsys.readouterr().err


def test_preview_cli_from_config(tmp_path, fashion_root):
    import yaml

    from tests.conftest import tiny_experiment

    data = tiny_experiment(tmp_path, fashion_root)
    data["ood"]["train"].append({"name": "augmentation", "params": {"policy": "augmix"}})
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "preview.png"
    argv = [
        "ood",
        "preview",
        "--config",
        str(config),
        "--out",
        str(out),
        "--count",
        "2",
        "--size",
        "32",
        "--severities",
        "2",
    ]
    assert main(argv) == 0
    sheet = np.asarray(Image.open(out))
    # Rows: clean, gaussian_noise, defocus_blur, contrast, augmentation augmix.
    assert sheet.shape[0] == 4 + 5 * (14 + 32 + 4)
