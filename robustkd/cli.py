"""The `robustkd` command: precompute, train and evaluate.

    robustkd precompute --config configs/fashion-mnist.yaml [key=value ...]
    robustkd train --config configs/fashion-mnist.yaml --method robustkd [key=value ...]
    robustkd evaluate --config configs/fashion-mnist.yaml [--methods lora full robustkd]
    robustkd experiment --config configs/experiments/fashion-mnist-baselines.yaml
    robustkd ood preview|regenerate ...        (docs/ood.md)
    robustkd shards ls|push|pull|verify|rm|id  (docs/sharing.md)

Overrides use dotted config paths, for example `train.epochs=1` or `dataset.root=/data/fmnist`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from schemas.config import config_to_dict, load_config
from schemas.errors import RobustKDError

log = logging.getLogger("robustkd")


def _precompute(args) -> None:
    from pipeline.precompute import run_precompute

    cfg = load_config(args.config, args.overrides)
    folder = run_precompute(cfg)
    print(f"shard set ready: {folder}")


def _train(args) -> None:
    from trainer.recipe import TrainRecipe

    cfg = load_config(args.config, args.overrides)
    methods = args.method or list(cfg.methods)
    for method in methods:
        log.info("training %s with %s", method, config_to_dict(cfg.method_config(method)))
        recipe = TrainRecipe(cfg, method)
        recipe.setup()
        try:
            recipe.train()
        finally:
            recipe.cleanup()


def _evaluate(args) -> None:
    from trainer.evaluate import evaluate_experiment, format_table

    cfg = load_config(args.config, args.overrides)
    methods = args.methods if args.methods is not None else list(cfg.methods)
    report = evaluate_experiment(cfg, methods)
    print(format_table(report["methods"]))
    print(f"\nreport: {cfg.runs_dir() / 'report.md'}\nmetrics: {cfg.runs_dir() / 'metrics.json'}")


def _experiment(args) -> None:
    from pipeline.precompute import run_precompute
    from trainer.experiment import run_experiment

    cfg = load_config(args.config, args.overrides)
    run_precompute(cfg)
    report = run_experiment(cfg)
    print(f"report: {report / 'report.md'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustkd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--config", required=True, help="experiment YAML, e.g. configs/fashion-mnist.yaml"
        )
        p.add_argument("overrides", nargs="*", help="config overrides as dotted.key=value")
        p.set_defaults(func=func)
        return p

    add("precompute", _precompute, "generate OOD views and store teacher targets in shards")
    train = add("train", _train, "train students on a shard set")
    train.add_argument(
        "--method",
        action="append",
        help="method name from the config's `methods` (repeatable; default: all)",
    )
    evaluate = add("evaluate", _evaluate, "score the teacher and trained methods")
    evaluate.add_argument(
        "--methods", nargs="*", help="methods to score (default: all in the config)"
    )
    add(
        "experiment",
        _experiment,
        "precompute, then run methods x seeds with WiSE-FT and write the report",
    )
    from pipeline.ood.cli import register as register_ood

    register_ood(sub)
    from shardstore.cli import register as register_shards

    register_shards(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    parser = build_parser()
    # Overrides may also follow options (`--method robustkd train.epochs=1`), which argparse
    # leaves unparsed; accept those that look like key=value.
    args, extra = parser.parse_known_args(argv)
    bad = [item for item in extra if "=" not in item or item.startswith("-")]
    if not hasattr(args, "overrides"):
        bad = list(extra)
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if hasattr(args, "overrides"):
        # nargs="*" options such as --methods also swallow key=value words that follow them.
        for name, value in vars(args).items():
            if name != "overrides" and isinstance(value, list):
                setattr(args, name, [v for v in value if not (isinstance(v, str) and "=" in v)])
                extra += [v for v in value if isinstance(v, str) and "=" in v]
        args.overrides = list(args.overrides or []) + extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        args.func(args)
    except (RobustKDError, FileNotFoundError) as exc:
        print(f"robustkd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
