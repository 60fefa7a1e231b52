"""`make bench`: precompute, training, storage, memory, OOD generation and scaling, in one run.

    HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/bench.py
        [--smoke] [--data-root /usr/share/datasets/fashion-mnist] [--out docs/BENCHMARKS.md]
        [--json docs/benchmarks.json] [--repeats 3] [--ray-cpus N] [--scratch FOLDER]
        [--render docs/benchmarks.json]

Writes a Markdown report and a JSON file with every figure: the machine, the commands, and for
each measure the median over repeats with min and max. The workload is the demo config
(`configs/fashion-mnist.yaml`: EfficientNet-Lite0 teacher at 64 px, three taps), resized per
section. `--smoke` runs every section on tiny sizes in 1-3 minutes; it checks that the
benchmark works, and its figures mean nothing. `--render` rewrites the report from an earlier
run's JSON without measuring. The sections are in `benchmarks/perf_*.py`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from benchmarks import ood_generators  # noqa: E402
from benchmarks.perf_common import machine  # noqa: E402
from benchmarks.perf_precompute import bench_config, job_images, precompute_section  # noqa: E402
from benchmarks.perf_report import markdown, scaling_figure  # noqa: E402
from benchmarks.perf_storage import storage_section  # noqa: E402
from benchmarks.perf_training import training_section  # noqa: E402
from pipeline.precompute import HEAD_FILE  # noqa: E402

log = logging.getLogger("benchmarks.bench")

FULL = {
    "precompute_sizes": [500, 1000, 2000, 4000],
    "train_repeats": 5,
    "train_samples": 1000,
    "train_batch_size": 64,
    "train_steps": 10,
    "shuffle_buffer": 1000,
    "storage_images": 256,
    "ood_sizes": [64, 224],
    "ood_images": 4,
    "ood_repeats": 3,
}
SMOKE = {
    "precompute_sizes": [8, 16],
    "train_repeats": 1,
    "train_samples": 32,
    "train_batch_size": 8,
    "train_steps": 1,
    "shuffle_buffer": 16,
    "storage_images": 8,
    "ood_sizes": [32],
    "ood_images": 1,
    "ood_repeats": 1,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat (a check)")
    parser.add_argument(
        "--data-root",
        default="/usr/share/datasets/fashion-mnist",
        help="Fashion-MNIST IDX folder (make data installs it)",
    )
    parser.add_argument(
        "--out",
        help="report file (default docs/BENCHMARKS.md, or benchmarks/results/smoke/BENCHMARKS.md "
        "with --smoke)",
    )
    parser.add_argument("--json", help="JSON file (default: benchmarks.json beside the report)")
    parser.add_argument(
        "--repeats",
        type=int,
        help="timed repeats of each measure, training included (default 3 and 5 for training; "
        "1 with --smoke). The two-actor layout always runs once per size",
    )
    parser.add_argument("--ray-cpus", type=int, help="CPUs of the local Ray cluster (default all)")
    parser.add_argument("--scratch", help="folder for shards and runs (default: a temporary one)")
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="measure nothing: write the report from the figures of an earlier run's JSON",
    )
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        setattr(args, key, value)
    # A smoke run must not overwrite the committed report.
    docs = REPO / "benchmarks" / "results" / "smoke" if args.smoke else REPO / "docs"
    args.out = args.out or str(docs / "BENCHMARKS.md")
    args.json = args.json or str(Path(args.out).with_name("benchmarks.json"))
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 3
    else:
        args.train_repeats = args.repeats
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be at least 1")
    if args.ray_cpus is not None and args.ray_cpus < 2:
        parser.error(
            f"--ray-cpus {args.ray_cpus}: must be at least 2, for two teacher actors and the "
            "view tasks; leave it out to use every CPU"
        )
    if not args.render and not Path(args.data_root, "train-images-idx3-ubyte.gz").is_file():
        parser.error(
            f"--data-root {args.data_root}: no Fashion-MNIST IDX files there; run 'make data' "
            "or pass the folder that contains train-images-idx3-ubyte.gz"
        )
    return args


def _git_commit() -> str:
    """Return the short commit hash, with `-dirty` if the working tree has changes."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=REPO
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def ood_section(args, scratch: Path) -> dict[str, Any]:
    """Run the OOD generator benchmark at the section's sizes and return its report."""
    argv = [
        "--sizes",
        *map(str, args.ood_sizes),
        "--images",
        str(args.ood_images),
        "--repeats",
        str(args.ood_repeats),
        "--glass-blur-repeats",
        "1",
        "--out",
        str(scratch / "ood"),
    ]
    ood_generators.main(argv)
    return json.loads((scratch / "ood" / "ood_generators.json").read_text())


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    started = time.perf_counter()
    report: dict[str, Any] = {
        "command": "python benchmarks/bench.py " + " ".join(sys.argv[1:]),
        "smoke": args.smoke,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "machine": machine(),
        "settings": {key: getattr(args, key) for key in (*FULL, "repeats")},
        "seconds": {},
    }

    # Precompute first: its first job fits the teacher head that later sections reuse.
    sections = [
        ("precompute", lambda: precompute_section(args, scratch)),
        ("training", lambda: training_section(args, scratch)),
        ("storage", lambda: _storage(args, scratch)),
        ("ood", lambda: ood_section(args, scratch)),
    ]
    for name, section in sections:
        start = time.perf_counter()
        log.info("section %s", name)
        report[name] = section()
        report["seconds"][name] = time.perf_counter() - start
        log.info("section %s done in %.0f s", name, report["seconds"][name])
    report["seconds"]["total"] = time.perf_counter() - started
    return report


def _storage(args, scratch: Path) -> dict[str, Any]:
    cfg, _ = bench_config(args.data_root, scratch, "storage", args.storage_images)
    head = scratch / "shards" / "precompute-probe" / HEAD_FILE
    images = job_images(cfg)[: args.storage_images]
    return storage_section(cfg, head, images)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.render:
        report = json.loads(Path(args.render).read_text())
        Path(args.out).write_text(markdown(report, ood_generators.markdown(report["ood"])))
        log.info("wrote %s from %s", args.out, args.render)
        return report
    with tempfile.TemporaryDirectory(prefix="robustkd-bench-") as tmp:
        scratch = Path(args.scratch or tmp)
        report = run(args, scratch)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure = out.parent / "img" / ("bench_scaling_smoke.png" if args.smoke else "bench_scaling.png")
    scaling_figure(report, figure)
    report["figures"] = {"scaling": str(figure.relative_to(out.parent))}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    out.write_text(markdown(report, ood_generators.markdown(report["ood"])))
    log.info("wrote %s and %s in %.0f s", out, args.json, report["seconds"]["total"])
    return report


if __name__ == "__main__":
    main()
