"""Two teammates share a shard set through S3: A precomputes and pushes, B trains from the id.

User B works in another folder with an empty cache and no copy of the data set, and trains in a
separate process that must never import `pipeline`, so the teacher cannot be constructed there.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import webdataset as wds
import yaml
from conftest import REPO, tiny_experiment
from test_shardstore import BUCKET, s3_endpoint, shards_cli  # noqa: F401 (fixture)

from pipeline.precompute import run_precompute
from schemas.config import ExperimentConfig, config_from_dict
from schemas.errors import ShardSetError
from schemas.manifest import Manifest, sha256_file
from schemas.sample import decode_wds, encode_wds
from trainer.recipe import TrainRecipe

pytestmark = pytest.mark.slow

COMPACT = {"logits": "topk", "top_k": 3, "activation_dtype": "int8"}

TRAIN_AS_USER_B = textwrap.dedent(
    """
    import json, sys
    import trainer.student as student
    from schemas.config import load_config
    from trainer.recipe import TrainRecipe

    built = []
    build_backbone = student.build_backbone
    def counting_build(config, *args, **kwargs):
        built.append(config.arch)
        return build_backbone(config, *args, **kwargs)
    student.build_backbone = counting_build

    recipe = TrainRecipe(load_config("experiment.yaml"), "robustkd")
    recipe.setup()
    recipe.train()
    recipe.cleanup()
    pipeline = sorted(m for m in sys.modules if m.split(".")[0] == "pipeline")
    folder = str(recipe.shards_dir)
    print(json.dumps({"built": built, "pipeline_modules": pipeline, "folder": folder}))
    """
)


def write_config(folder, data) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def published(tmp_path_factory, fashion_root, ray_cluster, s3_endpoint):  # noqa: F811
    """User A: compute the id up front, precompute with compact storage, push to S3."""
    user_a = tmp_path_factory.mktemp("user-a")
    data = tiny_experiment(user_a, fashion_root)
    data["precompute"]["storage"] = COMPACT
    config_path = write_config(user_a, data)
    remote = f"s3://{BUCKET}/team"

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        shards_cli("id", "--config", config_path)
    announced = printed.getvalue().strip()
    cfg = config_from_dict(ExperimentConfig, data)
    folder = run_precompute(cfg)
    shards_cli("push", str(folder), "--remote", remote)
    return cfg, folder, remote, announced


def test_id_is_known_before_precompute(published):
    _, folder, _, announced = published
    manifest = Manifest.read(folder)
    assert announced == manifest.shard_set_id
    assert manifest.layout.logits == "topk"
    assert [s.dtype for s in manifest.layout.layers] == ["int8", "int8"]


def test_teammate_trains_from_id_without_teacher(published, tmp_path, fashion_root):
    cfg, folder, remote, _ = published
    set_id = Manifest.read(folder).shard_set_id
    user_b = tmp_path / "user-b"
    data = tiny_experiment(user_b, user_b / "no-dataset-here", shard_set=set_id)
    write_config(user_b, data)
    env = {
        **os.environ,
        "ROBUSTKD_CACHE": str(user_b / "cache"),
        "ROBUSTKD_REMOTE": remote,
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_AS_USER_B],
        capture_output=True,
        text=True,
        cwd=user_b,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["pipeline_modules"] == []
    assert report["built"] == ["efficientnet_lite0"]  # the student only
    assert report["folder"] == str(user_b / "cache" / set_id)
    assert (user_b / "runs" / "robustkd" / "checkpoints" / "epoch-000" / "state.json").is_file()
    for name, _, sha in Manifest.read(folder).files():
        assert sha256_file(user_b / "cache" / set_id / name) == sha


def test_student_with_other_weights_is_refused(published, tmp_path, monkeypatch):
    cfg, folder, remote, _ = published
    set_id = Manifest.read(folder).shard_set_id
    monkeypatch.setenv("ROBUSTKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ROBUSTKD_REMOTE", remote)
    data = tiny_experiment(tmp_path, tmp_path / "no-data", shard_set=set_id)
    data["teacher"] = {**data["teacher"], "pretrained": False}
    other = config_from_dict(ExperimentConfig, data)
    with pytest.raises(ShardSetError, match="student base weights .* do not match"):
        TrainRecipe(other, "lora").setup()


def test_recompute_matches_stored_targets(published, capsys):
    _, folder, _, _ = published
    shards_cli("verify", str(folder), "--recompute", "8", "--torch-threads", "1")
    out = capsys.readouterr().out
    assert "recomputed 8 samples: max logit error" in out


def test_recompute_catches_changed_targets(published, tmp_path):
    _, folder, _, _ = published
    copy = tmp_path / "tampered"
    shutil.copytree(folder, copy)
    manifest = Manifest.read(copy)
    shard = manifest.shards_of("id_test")[0]
    samples = [decode_wds(m) for m in wds.WebDataset(str(folder / shard.tar), shardshuffle=False)]
    with wds.TarWriter(str(copy / shard.tar)) as tar:
        for sample in samples:
            sample.logits = sample.logits + 0.5
            tar.write(encode_wds(sample, manifest.layout))
    # The checksums are updated too, so only the recomputation can notice.
    shard.tar_bytes = (copy / shard.tar).stat().st_size
    shard.tar_sha256 = sha256_file(copy / shard.tar)
    manifest.write(copy)
    total = sum(manifest.counts().values())
    with pytest.raises(ShardSetError, match="differ from the teacher beyond the tolerance"):
        shards_cli("verify", str(copy), "--recompute", str(total), "--torch-threads", "1")
