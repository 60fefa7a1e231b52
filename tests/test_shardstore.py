"""Shard sets as shared artefacts: ids, push and pull against a moto S3 server on loopback.

The server runs in this process (moto's `ThreadedMotoServer`) on 127.0.0.1 with a free port;
pyarrow's S3 client reaches it through `AWS_ENDPOINT_URL`, as it would reach MinIO or AWS.
"""

import argparse
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.fs as pafs
import pytest
from conftest import REPO, tiny_experiment
from safetensors.numpy import save_file

from pipeline.writer import ShardWriter, read_done_record
from schemas import SCHEMA_VERSION
from schemas.config import ExperimentConfig, config_from_dict
from schemas.errors import ShardSetError
from schemas.manifest import FileDigest, Manifest, TeacherFingerprint, sha256_file
from schemas.sample import LayerSpec, StoredSample, TargetLayout
from shardstore import remote as remote_module
from shardstore.cache import ShardCache
from shardstore.cli import register
from shardstore.ids import id_inputs, shard_set_id
from shardstore.remote import RemoteStore, display_url
from shardstore.resolve import resolve_shards_dir
from shardstore.transfer import pull, push
from shardstore.verify import verify_folder

BUCKET = "team-bucket"
LAYOUT = TargetLayout(8, 4, [LayerSpec("blk.1", "int8", (6,))], logits="topk", top_k=2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on loopback, and AWS settings that point only at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "test-access-key",
            "AWS_SECRET_ACCESS_KEY": "test-secret-key",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }.items():
            env.setenv(name, value)
        admin = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True
        )
        admin.create_dir(BUCKET)
        yield endpoint
    server.stop()


@pytest.fixture()
def remote_url(s3_endpoint, request):
    """A fresh prefix in the bucket for each test."""
    return f"s3://{BUCKET}/{request.node.name}"


def make_shard_set(folder, seed: int = 0) -> Manifest:
    """Write a small shard set without Ray: three shards, a head file and the manifest."""
    rng = np.random.default_rng(seed)
    shards = []
    for index, split in enumerate(["id_train", "id_train", "ood_train"]):
        name = f"{split}-{index:05d}"
        with ShardWriter(folder, name, split, LAYOUT) as writer:
            for i in range(6):
                writer.write(
                    StoredSample(
                        key=f"k{index}-{i}",
                        split=split,
                        source_key=f"k{index}-{i}",
                        generator="identity",
                        generator_params={},
                        generator_seed=0,
                        label=i % 4,
                        domain="",
                        image=rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8),
                        logits=rng.standard_normal(4).astype(np.float32),
                        activations={"blk.1": rng.standard_normal(6).astype(np.float32)},
                    )
                )
        shards.append(read_done_record(folder, name))
    head = folder / "teacher_head.safetensors"
    save_file({"weight": rng.standard_normal((4, 6)).astype(np.float32)}, str(head))
    inputs = {"schema_version": SCHEMA_VERSION, "synthetic": seed}
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        package_version="test",
        git_commit="test",
        created_at="2026-01-01T00:00:00+00:00",
        teacher=TeacherFingerprint("arch", "a" * 64, "linear_probe", "b" * 64),
        dataset={"name": "synthetic"},
        generator_config={},
        layout=LAYOUT,
        classes=list("abcd"),
        shards=shards,
        shard_set_id=shard_set_id(inputs),
        id_inputs=inputs,
        extra_files={head.name: FileDigest(head.stat().st_size, sha256_file(head))},
    )
    manifest.write(folder)
    return manifest


def shards_cli(*argv: str) -> None:
    parser = argparse.ArgumentParser(prog="robustkd")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["shards", *argv])
    args.func(args)


def folder_digests(folder) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def test_id_ignores_machine_settings(tmp_path):
    first = config_from_dict(ExperimentConfig, tiny_experiment(tmp_path / "a", tmp_path / "d1"))
    second = config_from_dict(ExperimentConfig, tiny_experiment(tmp_path / "b", tmp_path / "d2"))
    second.precompute.num_teacher_actors = 4
    second.precompute.storage.top_k = 3  # ignored while logits are float32
    same = shard_set_id(id_inputs(first, "w" * 64, "f" * 64))
    assert shard_set_id(id_inputs(second, "w" * 64, "f" * 64)) == same

    second.precompute.storage.activation_dtype = "int8"
    assert shard_set_id(id_inputs(second, "w" * 64, "f" * 64)) != same
    assert shard_set_id(id_inputs(first, "x" * 64, "f" * 64)) != same
    assert shard_set_id(id_inputs(first, "w" * 64, "g" * 64)) != same


def test_id_is_the_same_in_another_process():
    inputs = {"schema_version": SCHEMA_VERSION, "teacher": {"arch": "vit", "taps": ["a", "b"]}}
    code = (
        "import json, sys; from shardstore.ids import shard_set_id; "
        "print(shard_set_id(json.loads(sys.argv[1])))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, json.dumps(inputs)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert other.stdout.strip() == shard_set_id(inputs)


def test_display_url_hides_secrets():
    url = "s3://key:secret@bucket/prefix?access_key=AKIA&secret_key=hidden"
    assert display_url(url) == "s3://bucket/prefix"
    assert display_url("/data/team") == "/data/team"


def test_push_then_pull_into_empty_cache(tmp_path, remote_url, capsys):
    manifest = make_shard_set(tmp_path / "made")
    set_id = manifest.shard_set_id
    shards_cli("push", str(tmp_path / "made"), "--remote", remote_url)
    assert f"shard set {set_id}" in capsys.readouterr().out

    shards_cli("ls", "--remote", remote_url)
    assert capsys.readouterr().out.startswith(f"{set_id}  synthetic  arch@aaaaaaaaaaaa")

    cache = tmp_path / "cache"
    shards_cli("pull", set_id, "--remote", remote_url, "--cache", str(cache))
    pulled = folder_digests(cache / set_id)
    made = folder_digests(tmp_path / "made")
    assert pulled == {name: made[name] for name in pulled}
    assert set(pulled) == {n for n, _, _ in manifest.files()} | {"manifest.json"}
    assert verify_folder(cache / set_id).counts["id_train"] == 12

    capsys.readouterr()
    shards_cli("verify", set_id, "--cache", str(cache))
    assert f"{set_id} at {cache / set_id}: 7 files match" in capsys.readouterr().out
    shards_cli("ls", "--cache", str(cache))
    assert capsys.readouterr().out.startswith(set_id)


def test_second_push_uploads_nothing(tmp_path, remote_url):
    make_shard_set(tmp_path / "made")
    store = RemoteStore(remote_url)
    assert len(push(tmp_path / "made", store).uploaded) == 8  # 7 files and the manifest
    again = push(tmp_path / "made", store)
    assert again.uploaded == []


def test_push_rejects_other_files_under_same_id(tmp_path, remote_url):
    make_shard_set(tmp_path / "one", seed=0)
    other = make_shard_set(tmp_path / "two", seed=1)
    # Same inputs, different bytes: what two machines with different float rounding produce.
    data = json.loads((tmp_path / "two" / "manifest.json").read_text())
    data["id_inputs"] = {"schema_version": SCHEMA_VERSION, "synthetic": 0}
    data["shard_set_id"] = shard_set_id(data["id_inputs"])
    (tmp_path / "two" / "manifest.json").write_text(json.dumps(data))
    assert other.shard_set_id != data["shard_set_id"]
    store = RemoteStore(remote_url)
    push(tmp_path / "one", store)
    with pytest.raises(ShardSetError, match="already contains shard set .* with other file"):
        push(tmp_path / "two", store)


class FailingReader:
    """A file that raises after its first chunk, like a network or disk failure mid-upload."""

    def __init__(self, path):
        self.file = open(path, "rb")  # noqa: SIM115
        self.reads = 0

    def read(self, size):
        self.reads += 1
        if self.reads > 1:
            raise ConnectionResetError("connection reset while uploading")
        return self.file.read(size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_interrupted_push_resumes(tmp_path, remote_url, monkeypatch):
    manifest = make_shard_set(tmp_path / "made")
    set_id = manifest.shard_set_id
    names = [n for n, _, _ in manifest.files()]
    opened = []

    def open_failing_third(path, mode="r", *args, **kwargs):
        opened.append(path)
        if len(opened) == 3:
            return FailingReader(path)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(remote_module, "CHUNK_BYTES", 512)
    monkeypatch.setattr(remote_module, "open", open_failing_third, raising=False)
    store = RemoteStore(remote_url)
    with pytest.raises(ConnectionResetError):
        push(tmp_path / "made", store)
    monkeypatch.undo()

    # Nothing looks complete, and the failed file left no object, whole or partial.
    assert store.ids() == {set_id: False}
    assert store.size(set_id, "manifest.json") is None
    assert store.size(set_id, names[2]) is None
    assert store.size(set_id, names[2] + ".partial") is None
    with pytest.raises(ShardSetError, match=r"is incomplete \(its push did not finish\)"):
        pull(set_id, store, ShardCache(tmp_path / "cache"))

    resumed = push(tmp_path / "made", store)
    assert resumed.skipped == names[:2]
    assert resumed.uploaded == [*names[2:], "manifest.json"]
    pull(set_id, store, ShardCache(tmp_path / "cache"))
    verify_folder(tmp_path / "cache" / set_id)


def corrupt_object(remote_url: str, set_id: str, name: str) -> None:
    """Flip one byte of a remote object, keeping its size."""
    store = RemoteStore(remote_url)
    path = f"{store.base}/{set_id}/{name}"
    data = bytearray(store.read_bytes(set_id, name))
    data[len(data) // 2] ^= 0xFF
    with store.filesystem.open_output_stream(path) as stream:
        stream.write(bytes(data))


def test_corrupted_object_is_caught_by_pull(tmp_path, remote_url, capsys):
    manifest = make_shard_set(tmp_path / "made")
    set_id = manifest.shard_set_id
    store = RemoteStore(remote_url)
    push(tmp_path / "made", store)
    corrupt_object(remote_url, set_id, "id_train-00001.parquet")

    cache = ShardCache(tmp_path / "cache")
    with pytest.raises(ShardSetError, match=r"id_train-00001.parquet: the object .* damaged"):
        pull(set_id, store, cache)
    assert cache.ids() == []
    partial = cache.partial_path(set_id)
    assert "id_train-00001.parquet" not in os.listdir(partial)
    assert not [n for n in os.listdir(partial) if n.endswith(".download")]
    with pytest.raises(ShardSetError, match="id_train-00001.parquet: sha256 differs"):
        shards_cli("verify", set_id, "--remote", remote_url)

    # Replacing the damaged object lets the same pull finish; checked files are kept.
    store.upload(tmp_path / "made" / "id_train-00001.parquet", set_id, "id_train-00001.parquet")
    pull(set_id, store, cache)
    assert cache.ids() == [set_id]
    assert not partial.exists()


PULL_WITH_SIZE_LIMIT = textwrap.dedent(
    """
    import resource, signal, sys
    from shardstore.cache import ShardCache
    from shardstore.remote import RemoteStore
    from shardstore.transfer import pull
    from schemas.errors import ShardSetError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))
    try:
        pull(sys.argv[1], RemoteStore(sys.argv[2]), ShardCache(sys.argv[3]))
    except ShardSetError as exc:
        print(exc)
        sys.exit(3)
    """
)


def test_write_error_during_pull_keeps_nothing_half_written(tmp_path, remote_url):
    manifest = make_shard_set(tmp_path / "made")
    set_id = manifest.shard_set_id
    push(tmp_path / "made", RemoteStore(remote_url))
    cache = ShardCache(tmp_path / "cache")

    result = subprocess.run(
        [sys.executable, "-c", PULL_WITH_SIZE_LIMIT, set_id, remote_url, str(cache.root)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "File too large" in result.stdout
    assert "nothing half-written was kept" in result.stdout
    assert cache.ids() == []
    expected = {name: sha for name, _, sha in manifest.files()}
    kept = os.listdir(cache.partial_path(set_id))
    assert len(kept) < len(expected)
    for name in kept:  # only whole, verified files stay
        assert sha256_file(cache.partial_path(set_id) / name) == expected[name]

    pull(set_id, RemoteStore(remote_url), cache)
    verify_folder(cache.path(set_id))


def test_plain_folder_works_as_remote(tmp_path):
    manifest = make_shard_set(tmp_path / "made")
    team = tmp_path / "team-share"
    push(tmp_path / "made", RemoteStore(str(team)))
    assert sorted(os.listdir(team / manifest.shard_set_id))[-1] == "teacher_head.safetensors"
    path = pull(manifest.shard_set_id, RemoteStore(str(team)), ShardCache(tmp_path / "cache"))
    verify_folder(path)


def test_rm_from_cache_and_remote(tmp_path, remote_url, capsys):
    manifest = make_shard_set(tmp_path / "made")
    set_id = manifest.shard_set_id
    store = RemoteStore(remote_url)
    push(tmp_path / "made", store)
    cache = ShardCache(tmp_path / "cache")
    pull(set_id, store, cache)

    shards_cli("rm", set_id, "--cache", str(cache.root))
    assert cache.ids() == []
    shards_cli("rm", set_id, "--remote", remote_url)
    assert store.ids() == {}
    with pytest.raises(ShardSetError, match=f"shard set {set_id} is not in"):
        shards_cli("rm", set_id, "--remote", remote_url)


def test_pull_of_unknown_id_names_the_fix(tmp_path, remote_url):
    with pytest.raises(ShardSetError, match="0123456789abcdef is missing in s3://"):
        pull("0123456789abcdef", RemoteStore(remote_url), ShardCache(tmp_path))
    with pytest.raises(ShardSetError, match="not a shard-set id"):
        pull("fashion", RemoteStore(remote_url), ShardCache(tmp_path))


def test_resolve_without_remote_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBUSTKD_REMOTE", raising=False)
    data = tiny_experiment(tmp_path, tmp_path, shard_set="0123456789abcdef")
    cfg = config_from_dict(ExperimentConfig, data)
    with pytest.raises(ShardSetError, match="set ROBUSTKD_REMOTE=s3://bucket/prefix"):
        resolve_shards_dir(cfg, cache=ShardCache(tmp_path / "cache"))
