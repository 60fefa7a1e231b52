"""`make bench --smoke`: every benchmark section runs and lands in the report and the JSON."""

import json
import math
import os
import sys

import pytest
from conftest import REPO, make_fashion_mnist

sys.path.insert(0, str(REPO))

from benchmarks import bench  # noqa: E402
from benchmarks.perf_common import child_peak_rss  # noqa: E402
from benchmarks.perf_precompute import precompute_configs  # noqa: E402
from benchmarks.perf_report import goal_rows  # noqa: E402
from benchmarks.perf_storage import OPTIONS  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory, ray_cluster):
    folder = tmp_path_factory.mktemp("bench")
    # The smoke sizes need 4 x 32 training images for the 4x memory set.
    root = make_fashion_mnist(folder / "fashion-mnist", n_train=160, n_test=10)
    out = folder / "docs" / "BENCHMARKS.md"
    report = bench.main(
        ["--smoke", "--data-root", str(root), "--out", str(out), "--json", str(folder / "b.json")]
    )
    return report, out, folder / "b.json"


def test_smoke_report_has_every_section(smoke_report):
    _, out, _ = smoke_report
    text = out.read_text()
    for heading in (
        "## Goals",
        "## Precompute",
        "### Scaling",
        "## Training",
        "### Memory",
        "## Storage",
        "## OOD generation",
    ):
        assert heading in text, heading
    assert "Smoke run" in text
    assert (out.parent / "img" / "bench_scaling_smoke.png").stat().st_size > 0


def test_smoke_json_matches_the_returned_report(smoke_report):
    report, _, json_path = smoke_report
    stored = json.loads(json_path.read_text())
    assert stored["precompute"]["configs"] == report["precompute"]["configs"]
    assert stored["smoke"] is True
    assert set(stored["seconds"]) == {"precompute", "training", "storage", "ood", "total"}


def test_smoke_figures_are_measured(smoke_report):
    report, _, _ = smoke_report
    pre = report["precompute"]
    layouts = precompute_configs(os.cpu_count() or 1)
    assert set(pre["configs"]) == set(layouts)
    for name, result in pre["configs"].items():
        assert result["bare_loop"]["median"] > 0, name
        assert result["torch_threads"] == layouts[name]["torch_threads"], name
        # Smoke jobs are too small for a meaningful slope; it only has to be computed.
        assert math.isfinite(result["fit"]["slope"]), name
        assert result["seconds"], name
        assert result["job_samples_per_s"]["median"] > 0, name
    for method in ("lora", "full"):
        training = report["training"][method]
        for kind in ("limit", "stored", "live_teacher"):
            assert training[kind]["median"] > 0, (method, kind)
    memory = report["training"]["memory"]
    assert memory["4x"]["samples"] == 4 * memory["1x"]["samples"]
    assert memory["1x"]["peak_rss_bytes"] > 100 * 2**20


def test_smoke_storage_rows_follow_the_layout(smoke_report):
    rows = smoke_report[0]["storage"]["rows"]
    assert [row["option"] for row in rows] == [name for name, _ in OPTIONS]
    by_option = {row["option"]: row for row in rows}
    # 10 float32 logits + 472 float16 channels, from the three taps of the demo config.
    assert by_option["logits float32, mean float16 (default)"]["target_bytes"] == 40 + 2 * 472
    assert by_option["logits float32, mean float32"]["target_bytes"] == 40 + 4 * 472


def test_goal_rows_cover_every_goal(smoke_report):
    report = smoke_report[0]
    rows = goal_rows(report)
    # One per-sample row per actor layout, the whole job, two per training method, memory.
    assert len(rows) == len(report["precompute"]["configs"]) + 1 + 4 + 1
    assert all(isinstance(met, bool) for *_, met in rows)


def test_missing_data_root_names_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--smoke", "--data-root", str(tmp_path / "nowhere")])
    assert "run 'make data'" in capsys.readouterr().err


def test_render_rewrites_the_same_report(smoke_report, tmp_path):
    _, out, json_path = smoke_report
    again = tmp_path / "again.md"
    bench.main(["--smoke", "--render", str(json_path), "--out", str(again)])
    assert again.read_text() == out.read_text()


def test_child_peak_excludes_the_parent(tmp_path):
    # A forked child's ru_maxrss starts at the parent's size; VmHWM does not.
    parent_ballast = bytearray(600 * 2**20)
    env = dict(os.environ)
    small, _ = child_peak_rss([sys.executable, "-c", "pass"], env, tmp_path / "small.log")
    large, _ = child_peak_rss(
        [sys.executable, "-c", "import time; b = bytearray(400 * 2**20); time.sleep(1)"],
        env,
        tmp_path / "large.log",
    )
    del parent_ballast
    assert small < 200 * 2**20
    assert large - small > 300 * 2**20
