"""Precompute on every benchmark fixture: shard counts per split and domain equal the metadata.

Each benchmark runs with its shipped config under configs/ and the overrides a user would pass
for a quick run. The fixture is `dataset.root`, the teacher is a randomly initialised
EfficientNet-Lite0 at 32 px, and there are no subsets and no generated OOD views, so only the
benchmark's own splits reach the shards. All data sets run in one module-scoped pass on one Ray
cluster. A random teacher head is written before each run, so precompute skips fitting the linear
probe. That halves the run time, and the counts do not depend on the head.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from fixtures_datasets import (
    CORRUPTIONS_15,
    build_camelyon17,
    build_cifar_c,
    build_csv_manifest,
    build_domainbed,
    build_fashion_mnist_subpop,
    build_imagefolder,
    build_imagenet_c,
    build_rxrx1,
    build_tiny_imagenet_c,
)

from backbones.heads import save_head
from pipeline.datasets import get_reader
from pipeline.precompute import HEAD_FILE, run_precompute
from pipeline.teacher import build_teacher
from schemas.config import ExperimentConfig, load_config
from schemas.manifest import Manifest

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def build_fixture(name: str, parent: Path, options: dict):
    """Build the fixture of a benchmark config, with the config's test domain for DomainBed."""
    if name in ("pacs", "vlcs", "office-home", "terra-incognita"):
        per_class = 1 if name == "office-home" else 2
        return build_domainbed(parent, name, options["test_domain"], per_class=per_class)
    builders = {
        "rxrx1": build_rxrx1,
        "camelyon17": build_camelyon17,
        "cifar10-c": build_cifar_c,
        "cifar100-c": lambda p: build_cifar_c(p, hundred=True),
        "imagenet-c": build_imagenet_c,
        "tiny-imagenet-c": build_tiny_imagenet_c,
        "fashion-mnist-subpop": build_fashion_mnist_subpop,
        "imagefolder": build_imagefolder,
        "csv": build_csv_manifest,
    }
    return builders[name](parent)


BENCHMARKS = [
    "rxrx1",
    "camelyon17",
    "pacs",
    "vlcs",
    "office-home",
    "terra-incognita",
    "cifar10-c",
    "cifar100-c",
    "imagenet-c",
    "tiny-imagenet-c",
    "fashion-mnist-subpop",
    "imagefolder",
    "csv",
]


def experiment(name: str, fixture, folder: Path) -> ExperimentConfig:
    """Load configs/<name>.yaml with the overrides a user would pass for a quick run."""
    overrides = [
        f"dataset.root={fixture.root}",
        "dataset.image_size=32",
        "dataset.max_train_samples=null",
        "dataset.max_test_samples=null",
        "teacher.pretrained=false",
        "teacher.taps=[_blocks.4]",
        "ood.views_per_image=0",
        f"precompute.output={folder / name}",
        "precompute.batch_size=128",
        "precompute.num_cpus=2",
    ]
    if "clean_root" in fixture.options:
        overrides.append(f"dataset.options.clean_root={fixture.options['clean_root']}")
    if name == "imagefolder":
        # The fixture has split folders; the shipped config expects <domain>/<class>/<image>.
        overrides.append("dataset.options.split_folders=true")
    return load_config(CONFIGS / f"{name}.yaml", overrides)


def roles_of(cfg: ExperimentConfig) -> dict[str, list[str]]:
    """Reader splits feeding each shard-set split."""
    ds = cfg.dataset
    roles = {
        "id_train": [ds.id_train_split],
        "id_test": [ds.id_test_split],
        "ood_val": ds.ood_val_splits,
        "ood_test": ds.ood_test_splits,
    }
    if ds.id_val_split:
        roles["id_val"] = [ds.id_val_split]
    return {role: splits for role, splits in roles.items() if splits}


def write_random_head(cfg: ExperimentConfig) -> None:
    """Store a random linear head where precompute looks for a fitted one."""
    classes = get_reader(cfg.dataset.name, cfg.dataset.root, cfg.dataset.options).classes
    features = build_teacher(cfg.teacher, cfg.dataset.image_size, None).feature_dim
    torch.manual_seed(0)
    folder = cfg.shards_dir()
    folder.mkdir(parents=True)
    save_head(torch.nn.Linear(features, len(classes)), folder / HEAD_FILE, "linear_probe")


def expected_counts(fixture, cfg: ExperimentConfig) -> dict[str, Counter]:
    """Samples per shard-set split and domain that the fixture's metadata implies."""
    options = cfg.dataset.options
    expected: dict[str, Counter] = {}
    for role, splits in roles_of(cfg).items():
        for split in splits:
            counts = fixture.expected[split]
            if split == "corrupted":
                # The fixture has every corruption and severity, but the config may pick some.
                chosen = {
                    f"{c}/{s}"
                    for c in options.get("corruptions", CORRUPTIONS_15)
                    for s in options.get("severities", range(1, 6))
                }
                counts = Counter({d: n for d, n in counts.items() if d in chosen})
            expected.setdefault(role, Counter()).update(counts)
    return expected


def stored_counts(folder) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    for path in sorted(folder.glob("*.parquet")):
        table = pq.read_table(path, columns=["split", "domain"]).to_pydict()
        for split, domain in zip(table["split"], table["domain"], strict=True):
            counts.setdefault(split, Counter())[domain] += 1
    return counts


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory, ray_cluster):
    """Build every fixture and run precompute on it once; return name -> (fixture, folder)."""
    data = tmp_path_factory.mktemp("benchmarks")
    out = tmp_path_factory.mktemp("shards")
    results = {}
    for name in BENCHMARKS:
        options = load_config(CONFIGS / f"{name}.yaml").dataset.options
        fixture = build_fixture(name, data / name, options)
        cfg = experiment(name, fixture, out)
        write_random_head(cfg)
        folder = run_precompute(cfg)
        results[name] = (fixture, cfg, folder)
    return results


@pytest.mark.parametrize("name", BENCHMARKS)
def test_precompute_counts_match_metadata(name, shard_sets):
    fixture, cfg, folder = shard_sets[name]
    manifest = Manifest.read(folder)
    expected = expected_counts(fixture, cfg)
    stored = stored_counts(folder)

    # An unreadable image is skipped and counted, so it is missing from the stored counts.
    skipped = manifest.skipped.get("unreadable_image", 0)
    assert skipped == fixture.unreadable
    assert sum(sum(c.values()) for c in stored.values()) + skipped == sum(
        sum(c.values()) for c in expected.values()
    )
    if not skipped:
        assert stored == expected
    for split, counts in stored.items():
        assert manifest.counts()[split] == sum(counts.values())
    assert manifest.dataset["name"] == name
    assert manifest.dataset["metric"] == "accuracy"


def test_unreadable_images_counted_where_listed(shard_sets):
    fixture, _, folder = shard_sets["camelyon17"]
    stored = stored_counts(folder)

    assert stored["id_train"]["center_0"] == fixture.expected["train"]["center_0"] - 1
    assert stored["id_train"]["center_3"] == fixture.expected["train"]["center_3"]
    fixture, _, folder = shard_sets["csv"]
    assert (
        stored_counts(folder)["id_train"]["hospital_a"]
        == fixture.expected["train"]["hospital_a"] - 1
    )


def test_corrupted_domains_parse_as_corruption_and_severity(shard_sets):
    _, _, folder = shard_sets["cifar10-c"]
    domains = stored_counts(folder)["ood_test"]

    corruptions = Counter(d.split("/")[0] for d in domains.elements())
    severities = Counter(int(d.split("/")[1]) for d in domains.elements())

    assert len(corruptions) == 15
    assert set(corruptions.values()) == {5 * 3}
    assert severities == {s: 15 * 3 for s in range(1, 6)}
