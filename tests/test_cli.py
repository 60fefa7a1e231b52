"""The robustkd command line: overrides in any position, errors with exit code 2."""

import pytest

from robustkd import cli


def test_overrides_after_list_options_stay_overrides(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "_evaluate", lambda args: seen.update(vars(args)))
    parser_args = [
        "evaluate",
        "--config",
        "configs/fashion-mnist.yaml",
        "--methods",
        "lora",
        "precompute.output=/tmp/x",
        "run_dir=/tmp/runs",
    ]
    monkeypatch.setattr(cli, "build_parser", _parser_with(monkeypatch))
    assert cli.main(parser_args) == 0
    assert seen["methods"] == ["lora"]
    assert seen["overrides"] == ["precompute.output=/tmp/x", "run_dir=/tmp/runs"]


def _parser_with(monkeypatch):
    original = cli.build_parser

    def build():
        parser = original()
        # Route evaluate to the patched function (set_defaults captured the original).
        for action in parser._subparsers._group_actions:
            action.choices["evaluate"].set_defaults(func=cli._evaluate)
        return parser

    return build


def test_config_error_exits_with_2(capsys):
    code = cli.main(["train", "--config", "configs/fashion-mnist.yaml", "train.epochs=two"])
    assert code == 2
    assert "train.epochs: expected int, got 'two'" in capsys.readouterr().err


def test_stray_word_is_rejected(capsys):
    code = cli.main(["train", "--config", "configs/fashion-mnist.yaml", "--method", "lora", "oops"])
    assert code == 2
    assert "override 'oops': expected key=value" in capsys.readouterr().err


def test_unknown_option_is_rejected():
    with pytest.raises(SystemExit):
        cli.main(["train", "--config", "configs/fashion-mnist.yaml", "--bogus"])


def test_shards_ls_says_when_the_cache_is_empty(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROBUSTKD_CACHE", str(tmp_path / "cache"))
    assert cli.main(["shards", "ls"]) == 0
    assert f"no shard sets in the cache {tmp_path / 'cache'}" in capsys.readouterr().out
