"""The `robustkd ood` commands: `preview` writes a contact sheet, `regenerate` rebuilds a sample.

    robustkd ood preview --out docs/img/ood_preview.png [--config configs/x.yaml] [--images DIR]
    robustkd ood regenerate KEY --shards FOLDER [--root DATA] [--out KEY.png] [--config YAML]

`register(subparsers)` adds the group to the main `robustkd` parser.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from PIL import Image

from schemas.errors import RobustKDError

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add the `ood` command group (preview, regenerate) to an argparse subparsers object."""
    ood = subparsers.add_parser("ood", help="inspect OOD generators and stored OOD samples")
    commands = ood.add_subparsers(dest="ood_command", required=True)

    preview = commands.add_parser(
        "preview",
        help="write a PNG contact sheet of every corruption and severity, and of the "
        "config's other generators",
    )
    preview.add_argument("--out", default="ood_preview.png", help="PNG file to write")
    preview.add_argument(
        "--config",
        help="experiment YAML: preview its ood.train generators and "
        "ood.test corruptions on its data set",
    )
    preview.add_argument(
        "--images",
        help="folder of images to use (default: the config's data "
        "set, else scikit-image's sample photos)",
    )
    preview.add_argument("--count", type=int, default=3, help="images per row block (default 3)")
    preview.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    preview.add_argument(
        "--severities",
        type=int,
        nargs="+",
        default=[1, 3, 5],
        help="corruption severities to show (default 1 3 5)",
    )
    preview.add_argument(
        "--corruptions", nargs="+", help="corruption names (default: the config's, else all 19)"
    )
    preview.add_argument(
        "--generator",
        action="append",
        default=[],
        metavar="NAME[:JSON]",
        help='extra generator row, for example \'augmentation:{"policy": "augmix"}\' (repeatable)',
    )
    preview.add_argument("--seed", type=int, default=0, help="seed of the first image's views")
    preview.add_argument("overrides", nargs="*", help="config overrides as dotted.key=value")
    preview.set_defaults(func=_preview)

    regenerate = commands.add_parser(
        "regenerate", help="rebuild a stored OOD sample and check it is bit-exact"
    )
    regenerate.add_argument("key", help="sample key in the shard set")
    regenerate.add_argument("--shards", required=True, help="shard set folder (with manifest.json)")
    regenerate.add_argument("--root", help="data set folder, if it moved since precompute")
    regenerate.add_argument("--out", help="PNG file for the regenerated image (default KEY.png)")
    regenerate.add_argument(
        "--config",
        help="experiment YAML; needed only for adversarial samples, to rebuild the teacher",
    )
    regenerate.set_defaults(func=_regenerate)


def _config_sources(args):
    """Return (images, corruptions, generators) from --config, or (None, None, [])."""
    if not args.config:
        return None, None, []
    from schemas.config import config_to_dict, load_config

    cfg = load_config(args.config, args.overrides)
    generators = [config_to_dict(g) for g in cfg.ood.train]
    corruptions = list(
        dict.fromkeys(
            [
                *cfg.ood.test.corruptions,
                *[
                    c
                    for g in generators
                    if g["name"] == "corruption"
                    for c in g["params"].get("corruptions", [])
                ],
            ]
        )
    )
    images = None
    if not args.images:
        from pipeline.datasets import get_reader, load_image, prepare_image

        reader = get_reader(cfg.dataset.name, cfg.dataset.root, cfg.dataset.options)
        records = reader.records(cfg.dataset.id_train_split)[: args.count]
        images = [prepare_image(load_image(r), args.size) for r in records]
    generators = [g for g in generators if g["name"] != "corruption"]
    return images, corruptions or None, generators


def _parse_generator(text: str) -> dict:
    name, _, params_json = text.partition(":")
    try:
        params = json.loads(params_json) if params_json else {}
    except json.JSONDecodeError as error:
        raise RobustKDError(
            f"--generator {text!r} has invalid JSON params ({error}); write it as "
            'NAME or NAME:{"key": value}'
        ) from error
    return {"name": name, "params": params}


def _preview(args) -> None:
    from pipeline.ood.corruptions import CORRUPTIONS
    from pipeline.ood.preview import build_preview, load_preview_images, sample_images

    if args.count < 1 or args.size < 8:
        raise RobustKDError(
            f"--count {args.count} / --size {args.size} are invalid; use "
            "--count >= 1 and --size >= 8"
        )
    images, corruptions, generators = _config_sources(args)
    if args.images:
        images = load_preview_images(args.images, args.count, args.size)
    elif images is None:
        images = sample_images(args.count, args.size)
    corruptions = args.corruptions or corruptions or list(CORRUPTIONS)
    generators = generators + [_parse_generator(text) for text in args.generator]

    sheet = build_preview(images, corruptions, args.severities, generators, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(out, optimize=True)
    log.info(
        "wrote %s (%dx%d px): %d corruptions x severities %s, %d other generators",
        out,
        sheet.shape[1],
        sheet.shape[0],
        len(corruptions),
        args.severities,
        len(generators),
    )


def _teacher_from_config(config: str | None, shards: str):
    if not config:
        return None
    from pipeline.precompute import HEAD_FILE
    from pipeline.teacher import build_teacher
    from schemas.config import load_config

    cfg = load_config(config, [])
    head = Path(shards) / HEAD_FILE
    return build_teacher(cfg.teacher, cfg.dataset.image_size, head if head.is_file() else None)


def _regenerate(args) -> None:
    from pipeline.ood.regenerate import regenerate_sample

    teacher = _teacher_from_config(args.config, args.shards)
    result = regenerate_sample(args.shards, args.key, args.root, teacher)
    out = Path(args.out or f"{args.key}.png")
    Image.fromarray(result.image).save(out)
    if not result.matches:
        stored = result.stored.image
        detail = (
            "shapes differ"
            if stored.shape != result.image.shape
            else (
                f"{int((stored != result.image).sum())} values differ, max difference "
                f"{int(abs(stored.astype(int) - result.image).max())}"
            )
        )
        raise RobustKDError(
            f"regenerated {args.key} ({result.stored.generator}) does not match the stored image: "
            f"{detail}; wrote it to {out}. Check that the package versions and the data set "
            "match the manifest"
        )
    log.info(
        "%s is bit-exact (%s, seed %d); wrote %s",
        args.key,
        result.stored.generator,
        result.stored.generator_seed,
        out,
    )
