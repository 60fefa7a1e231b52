"""Benchmark the OOD generators: images/s at 64 and 224 px, and glass_blur fast vs reference.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ood_generators.py [--sizes 64 224] [--repeats 5]
        [--images 8] [--skip adversarial diffusion] [--device cpu] [--torch-threads 1]
        [--out benchmarks/results]

Writes `ood_generators.json` and `ood_generators.md` to `--out`. Each throughput figure is the
median (and min, max) over `--repeats` runs of `--images` views, after one warm-up run that loads
models. Adversarial attacks use a randomly initialised EfficientNet-Lite0 teacher, and diffusion a
tiny random Stable Diffusion pipeline: their figures measure the code path, not a real model, unless
`--diffusion-model` names a local model folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.ood import CORRUPTIONS, apply_corruption, build_generator  # noqa: E402
from pipeline.ood.compat import glass_blur_reference  # noqa: E402
from pipeline.ood.glass_blur import glass_blur_fast  # noqa: E402
from pipeline.ood.preview import sample_images  # noqa: E402

log = logging.getLogger("benchmarks.ood_generators")


def photo_batch(count: int, size: int) -> list[np.ndarray]:
    """scikit-image sample photos, repeated to `count`, at size x size."""
    photos = sample_images(4, size)
    return [photos[i % len(photos)] for i in range(count)]


def measure(run: Callable[[], None], images: int, repeats: int) -> dict[str, float]:
    """Return images/s (median, min, max) over `repeats` calls of `run`, after one warm-up."""
    run()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(images / (time.perf_counter() - start))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def per_image_case(generator, images: list[np.ndarray]) -> Callable[[], None]:
    def run():
        for seed, image in enumerate(images):
            generator.generate(image, seed)

    return run


def corruption_case(name: str, images: list[np.ndarray]) -> Callable[[], None]:
    def run():
        for seed, image in enumerate(images):
            apply_corruption(image, name, 3, seed)

    return run


def adversarial_case(params: dict, images: list[np.ndarray], device: str) -> Callable[[], None]:
    from backbones import build_backbone
    from schemas.config import BackboneConfig

    size = images[0].shape[0]
    teacher = build_backbone(BackboneConfig(arch="efficientnet_lite0", pretrained=False), size)
    teacher.set_head(torch.nn.Linear(1280, 10))
    teacher = teacher.to(device).eval()
    generator = build_generator("adversarial", params)
    batch = np.stack(images)
    seeds = list(range(len(images)))
    return lambda: generator.generate_batch(teacher, batch, None, seeds)


def tiny_stable_diffusion(folder: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_ood_diffusion import write_tiny_stable_diffusion

    return write_tiny_stable_diffusion(folder)


def pool_folder(folder: Path, count: int = 32) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for index in range(count):
        pixels = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    return folder


def generator_cases(args, scratch: Path) -> dict[str, Callable[[list[np.ndarray]], Callable]]:
    """Case name -> factory that builds the timed function for a list of images."""
    cases: dict[str, Callable] = {}
    for name in CORRUPTIONS:
        cases[f"corruption/{name}"] = lambda images, name=name: corruption_case(name, images)
    cases["corruption/all (sampled)"] = lambda images: per_image_case(
        build_generator("corruption", {}), images
    )
    for policy in ("randaugment", "trivialaugment", "augmix"):
        cases[f"augmentation/{policy}"] = lambda images, policy=policy: per_image_case(
            build_generator("augmentation", {"policy": policy}), images
        )
    cases["pool/folder"] = lambda images: per_image_case(
        build_generator(
            "pool",
            {
                "source": "folder",
                "path": str(pool_folder(scratch / f"pool{len(list(scratch.iterdir()))}")),
            },
        ),
        images,
    )
    if "adversarial" not in args.skip:
        for params in (
            {"attack": "fgsm"},
            {"attack": "pgd_linf", "steps": 10},
            {"attack": "pgd_l2", "steps": 10},
        ):
            label = f"adversarial/{params['attack']}" + (" (10 steps)" if "steps" in params else "")
            cases[label] = lambda images, params=params: adversarial_case(
                params, images, args.device
            )
    if "diffusion" not in args.skip:
        model = args.diffusion_model or str(tiny_stable_diffusion(scratch / "tiny-sd"))
        params = {
            "model": model,
            "steps": args.diffusion_steps,
            "device": args.device,
            "domains": {"sketch": {"prompt": "a pencil sketch", "strength": 0.5}},
        }
        label = "diffusion/" + ("local model" if args.diffusion_model else "tiny random SD")
        cases[label] = lambda images: per_image_case(build_generator("diffusion", params), images)
    return cases


def glass_blur_table(size: int, repeats: int) -> list[dict]:
    """Time and strength of the reference and the fast glass_blur at each severity."""
    image = Image.fromarray(photo_batch(1, size)[0])
    clean = np.asarray(image, dtype=np.float64)
    rows = []
    for severity in range(1, 6):
        timings, outputs = {}, {}
        for label, function in (("reference", glass_blur_reference), ("fast", glass_blur_fast)):
            seconds = []
            for _ in range(repeats):
                np.random.seed(severity)
                start = time.perf_counter()
                outputs[label] = np.uint8(function(image, severity))
                seconds.append(time.perf_counter() - start)
            timings[label] = statistics.median(seconds)
        strength = {label: float(np.abs(out - clean).mean()) for label, out in outputs.items()}
        rows.append(
            {
                "size": size,
                "severity": severity,
                "reference_ms": 1000 * timings["reference"],
                "fast_ms": 1000 * timings["fast"],
                "reference_mean_abs_change": strength["reference"],
                "fast_mean_abs_change": strength["fast"],
                "identical": bool(np.array_equal(outputs["reference"], outputs["fast"])),
            }
        )
        log.info("glass_blur %d px severity %d: %s", size, severity, rows[-1])
    return rows


def markdown(report: dict) -> str:
    lines = [
        "## OOD generators",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}",
        "",
        "| generator | "
        + " | ".join(f"{s} px images/s (median [min, max])" for s in report["sizes"])
        + " |",
        "|---|" + "---|" * len(report["sizes"]),
    ]
    for name, by_size in report["throughput"].items():
        cells = [
            f"{r['median']:.1f} [{r['min']:.1f}, {r['max']:.1f}]"
            if (r := by_size.get(str(s)))
            else "-"
            for s in report["sizes"]
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### glass_blur: fast vs reference",
        "",
        "| size | severity | reference ms | fast ms | speed-up | reference mean abs change "
        "| fast mean abs change | bit-identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["glass_blur"]:
        lines.append(
            f"| {row['size']} | {row['severity']} | {row['reference_ms']:.0f} | "
            f"{row['fast_ms']:.1f} | {row['reference_ms'] / row['fast_ms']:.0f}x | "
            f"{row['reference_mean_abs_change']:.3f} | {row['fast_mean_abs_change']:.3f} | "
            f"{'yes' if row['identical'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="image sides (px)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case")
    parser.add_argument("--images", type=int, default=8, help="views per timed run")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["adversarial", "diffusion"],
        help="generator families to leave out",
    )
    parser.add_argument("--device", default="cpu", help="torch device of attacks and diffusion")
    parser.add_argument("--diffusion-model", help="local diffusers folder (default: tiny random)")
    parser.add_argument("--diffusion-steps", type=int, default=4, help="diffusion steps per view")
    parser.add_argument(
        "--glass-blur-repeats", type=int, default=3, help="timed runs per glass_blur severity"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1, as in a Ray task with num_cpus=1)",
    )
    parser.add_argument("--out", default="benchmarks/results", help="output folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    report = {
        "command": " ".join(
            ["python", "benchmarks/ood_generators.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, device {args.device}",
        "sizes": args.sizes,
        "throughput": {},
        "glass_blur": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        cases = generator_cases(args, Path(scratch))
        for name, factory in cases.items():
            report["throughput"][name] = {}
            for size in args.sizes:
                images = photo_batch(args.images, size)
                result = measure(factory(images), args.images, args.repeats)
                report["throughput"][name][str(size)] = result
                log.info("%s at %d px: %.1f images/s", name, size, result["median"])
    for size in args.sizes:
        report["glass_blur"] += glass_blur_table(size, args.glass_blur_repeats)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ood_generators.json").write_text(json.dumps(report, indent=2))
    (out / "ood_generators.md").write_text(markdown(report))
    log.info("wrote %s and %s", out / "ood_generators.json", out / "ood_generators.md")


if __name__ == "__main__":
    main()
