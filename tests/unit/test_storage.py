"""tkre.storage on local roots and on s3:// roots served by an in-process moto server."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tkre import storage

# --- local roots ---------------------------------------------------------------------------


def test_join_local_and_s3():
    assert storage.join("runs/demo", "finetune", "model") == "runs/demo/finetune/model"
    assert storage.join("runs/demo/", "/a/", "b/c") == "runs/demo/a/b/c"
    assert storage.join("s3://bucket", "a", "b.json") == "s3://bucket/a/b.json"
    assert storage.join("s3://bucket/pre//fix/", "/a/", "", "b/c/") == "s3://bucket/pre/fix/a/b/c"
    assert storage.join("s3://bucket/") == "s3://bucket"
    assert storage.is_s3("s3://bucket/x") and not storage.is_s3("/tmp/s3:/x")
    with pytest.raises(ValueError):
        storage.join("s3://")


def test_local_json_roundtrip_is_atomic(tmp_path: Path):
    uri = storage.join(str(tmp_path), "run", "nested", "metrics.json")
    assert not storage.exists(uri)
    storage.write_json(uri, {"b": 1, "a": [1, 2], "label": "Überweisung"})
    assert storage.exists(uri)
    assert storage.read_json(uri) == {"a": [1, 2], "b": 1, "label": "Überweisung"}
    text = storage.read_text(uri)
    assert text.index('"a"') < text.index('"b"') and text.endswith("}\n")
    storage.write_text(uri, "replaced")
    assert storage.read_text(uri) == "replaced"
    assert storage.list_files(tmp_path / "run") == ["nested/metrics.json"]  # no temp files left


def test_local_write_failure_leaves_old_file_and_no_temp(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    uri = tmp_path / "a.json"
    storage.write_json(uri, {"ok": True})

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        storage.write_text(uri, "new text")
    monkeypatch.undo()
    assert storage.read_json(uri) == {"ok": True}
    assert storage.list_files(tmp_path) == ["a.json"]


def test_local_list_upload_download(tmp_path: Path):
    src = _make_tree(tmp_path / "src")
    assert storage.list_files(src) == ["a.txt", "sub/b.txt", "sub/deeper/c.bin"]
    assert storage.list_files(tmp_path / "missing") == []
    storage.upload_dir(src, tmp_path / "up")
    storage.download_dir(tmp_path / "up", tmp_path / "down")
    assert storage.list_files(tmp_path / "down") == storage.list_files(src)
    assert (tmp_path / "down/sub/deeper/c.bin").read_bytes() == b"\x00\x01"
    assert storage.local_copy(str(src)) == src
    with pytest.raises(FileNotFoundError):
        storage.read_text(tmp_path / "missing.json")


def test_local_arrow_and_ray_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    fs, path = storage.arrow_filesystem("runs/x")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "runs/x")
    assert storage.ray_storage("runs/x") == (str(tmp_path / "runs/x"), None)


def _make_tree(root: Path) -> Path:
    (root / "sub/deeper").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub/b.txt").write_text("beta")
    (root / "sub/deeper/c.bin").write_bytes(b"\x00\x01")
    return root


# --- s3 roots (moto) -----------------------------------------------------------------------


def test_s3_json_exists_list(bucket: str):
    root = f"s3://{bucket}/runs/demo/"
    uri = storage.join(root, "finetune", "metrics.json")
    assert uri == f"s3://{bucket}/runs/demo/finetune/metrics.json"
    assert not storage.exists(uri) and not storage.exists(root)
    storage.write_json(uri, {"f1": 0.5, "acc": 1})
    assert storage.read_text(uri) == '{\n  "acc": 1,\n  "f1": 0.5\n}\n'
    assert storage.read_json(uri) == {"acc": 1, "f1": 0.5}
    assert storage.exists(uri)
    assert storage.exists(root) and storage.exists(storage.join(root, "finetune"))
    assert storage.exists(f"s3://{bucket}")
    assert not storage.exists(storage.join(root, "fine"))  # a key prefix is not a folder
    assert not storage.exists("s3://no-such-bucket-tkre/x")
    assert storage.list_files(root) == ["finetune/metrics.json"]
    assert storage.list_files(f"s3://{bucket}") == ["runs/demo/finetune/metrics.json"]
    with pytest.raises(FileNotFoundError):
        storage.read_text(storage.join(root, "missing.json"))


def test_s3_upload_download(bucket: str, tmp_path: Path):
    src = _make_tree(tmp_path / "src")
    root = f"s3://{bucket}/model"
    storage.upload_dir(src, root)
    assert storage.list_files(root) == ["a.txt", "sub/b.txt", "sub/deeper/c.bin"]
    storage.download_dir(root, tmp_path / "down")
    assert storage.list_files(tmp_path / "down") == storage.list_files(src)
    assert (tmp_path / "down/sub/b.txt").read_text() == "beta"


def test_s3_local_copy_is_cached_until_the_listing_changes(bucket: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    root = f"s3://{bucket}/model"
    storage.upload_dir(_make_tree(tmp_path / "src"), root)
    first = storage.local_copy(root)
    assert first.is_relative_to(tmp_path / "cache" / "s3")
    assert (first / "sub/deeper/c.bin").read_bytes() == b"\x00\x01"

    calls = []
    real_download = storage._download
    monkeypatch.setattr(storage, "_download",
                        lambda *args: calls.append(args) or real_download(*args))
    assert storage.local_copy(root + "/") == first  # unchanged: same folder, nothing fetched
    assert calls == []

    storage.write_text(storage.join(root, "a.txt"), "alpha, retrained")
    second = storage.local_copy(root)
    assert len(calls) == 1 and second != first
    assert (second / "a.txt").read_text() == "alpha, retrained"
    assert not first.exists()  # the stale copy is removed
    assert [p.name for p in second.parent.iterdir()] == [second.name]  # no temp folders left
    with pytest.raises(FileNotFoundError):
        storage.local_copy(f"s3://{bucket}/nothing-here")


def test_s3_arrow_filesystem_sees_boto3_objects(bucket: str):
    root = f"s3://{bucket}/ray"
    storage.write_text(storage.join(root, "from-boto3.txt"), "hello")
    fs, path = storage.arrow_filesystem(root)
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{bucket}/ray"
    with fs.open_input_stream(f"{path}/from-boto3.txt") as f:
        assert f.read() == b"hello"
    with fs.open_output_stream(f"{path}/sub/from-arrow.txt") as f:
        f.write(b"world")
    assert storage.read_text(storage.join(root, "sub/from-arrow.txt")) == "world"
    assert storage.list_files(root) == ["from-boto3.txt", "sub/from-arrow.txt"]

    ray_path, ray_fs = storage.ray_storage(root + "/")
    assert ray_path == f"{bucket}/ray" and isinstance(ray_fs, pafs.S3FileSystem)
    infos = ray_fs.get_file_info(pafs.FileSelector(ray_path, recursive=True))
    assert {i.path for i in infos if i.type == pafs.FileType.File} == {
        f"{bucket}/ray/from-boto3.txt", f"{bucket}/ray/sub/from-arrow.txt"}


def test_s3_local_copy_concurrent_callers_share_one_folder(bucket: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    root = f"s3://{bucket}/model"
    storage.upload_dir(_make_tree(tmp_path / "src"), root)
    real_download = storage._download
    inner: dict[str, Path] = {}

    def racing_download(*args):
        if "started" not in inner:  # another caller finishes first, while this one downloads
            inner["started"] = Path()
            inner["done"] = storage.local_copy(root)
        real_download(*args)

    monkeypatch.setattr(storage, "_download", racing_download)
    outer = storage.local_copy(root)
    assert outer == inner["done"] and (outer / "a.txt").read_text() == "alpha"
    assert [p.name for p in outer.parent.iterdir()] == [outer.name]  # the loser's temp is gone


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_replace_dir_leaves_exactly_the_new_files(kind: str, tmp_path: Path,
                                                  request: pytest.FixtureRequest):
    target = (f"s3://{request.getfixturevalue('bucket')}/model" if kind == "s3"
              else str(tmp_path / "model"))
    old = _make_tree(tmp_path / "old")
    storage.replace_dir(old, target)
    assert storage.list_files(target) == ["a.txt", "sub/b.txt", "sub/deeper/c.bin"]
    new = tmp_path / "new"
    new.mkdir()
    (new / "a.txt").write_text("new a")
    storage.replace_dir(new, target)
    assert storage.list_files(target) == ["a.txt"]
    assert storage.read_text(storage.join(target, "a.txt")) == "new a"
    storage.write_bytes(storage.join(target, "b.bin"), b"\x01")
    assert storage.list_files(target) == ["a.txt", "b.bin"]


# --- one writer per root (issue 14) ----------------------------------------------------------


def _locked_elsewhere(path: str) -> bool:
    """Whether a second open file (as another process has) cannot take the flock."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also drops the probe's own lock
    return False


def test_local_lock_is_reentrant_and_released_on_an_exception(tmp_path: Path):
    lock = str(tmp_path / "run" / "writer.lock")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.exclusive(lock, "run"):
            holder = json.loads(Path(lock).read_text())
            assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
            with storage.exclusive(lock, "run"):  # nested (a pipeline's stage): no deadlock
                assert _locked_elsewhere(lock)
            assert _locked_elsewhere(lock)  # the outer block still holds it
            raise RuntimeError("boom")
    assert not _locked_elsewhere(lock) and Path(lock).read_text() == ""


def test_a_root_that_is_a_file_or_not_writable_is_one_line(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(storage.StorageError, match="is .* a file, not a folder"):
        with storage.exclusive(str(tmp_path / "file" / "writer.lock"), "file"):
            pass
    real_open = os.open

    def read_only(path, *args):
        if str(path).endswith("writer.lock"):
            raise PermissionError(errno.EROFS, "Read-only file system")
        return real_open(path, *args)

    monkeypatch.setattr(storage.os, "open", read_only)
    with pytest.raises(storage.StorageError, match="^ro is not writable: Read-only file system$"):
        with storage.exclusive(str(tmp_path / "ro" / "writer.lock"), "ro"):
            pass


def test_s3_lease_is_conditional_reentrant_and_released(bucket: str):
    lock = f"s3://{bucket}/run/writer.lock"
    with storage.exclusive(lock, "run"):
        assert storage.read_json(lock)["pid"] == os.getpid()
        with storage.exclusive(lock, "run"):
            pass
        assert storage.exists(lock)  # the inner block left it held
        # another holder's conditional PUT (If-None-Match: *) fails, naming this one
        with pytest.raises(storage.StorageError, match=f"in use by .*pid {os.getpid()}"):
            storage._S3Lease(lock, "run", storage.LEASE_S)
    assert not storage.exists(lock)


def test_s3_live_lease_is_refused_and_a_stale_one_taken_over(bucket: str):
    lock = f"s3://{bucket}/run/writer.lock"
    other = {"owner": "x", "pid": 4242, "host": "node-7", "since": "2025-01-01T00:00:00Z",
             "command": "pretrain.py", "lease_s": 600}
    storage.write_json(lock, other)
    with pytest.raises(storage.StorageError,
                       match=r"^run is in use by pretrain.py \(pid 4242 on node-7"):
        with storage.exclusive(lock, "run"):
            pass
    assert storage.read_json(lock) == other
    storage.write_json(lock, other | {"lease_s": 0})  # not renewed within its lease: stale
    with storage.exclusive(lock, "run"):
        assert storage.read_json(lock)["pid"] == os.getpid()
    assert not storage.exists(lock)


def test_s3_lease_is_renewed_while_held(bucket: str):
    lock = f"s3://{bucket}/run/writer.lock"
    bucket_name, key = storage._split(lock)
    with storage.exclusive(lock, "run", lease_s=3.0):  # renewed every second
        first = storage.s3_client().head_object(Bucket=bucket_name, Key=key)["LastModified"]
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = storage.s3_client().head_object(Bucket=bucket_name, Key=key)["LastModified"]
            if now > first:
                break
        assert now > first


@pytest.fixture
def aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role on a laptop
    return monkeypatch


def test_s3_without_credentials_is_one_line(aws_env: pytest.MonkeyPatch):
    with pytest.raises(storage.StorageError, match="^s3://b/run: no AWS credentials: set"):
        with storage.exclusive("s3://b/run/writer.lock", "s3://b/run"):
            pass


def test_s3_endpoint_that_never_answers_fails_within_the_timeouts(aws_env: pytest.MonkeyPatch):
    silent = socket.socket()  # the kernel accepts connections; nobody ever answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    aws_env.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{silent.getsockname()[1]}")
    aws_env.setenv("AWS_ACCESS_KEY_ID", "testing")
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    aws_env.setattr(storage, "S3_READ_TIMEOUT_S", 0.5)
    aws_env.setattr(storage, "S3_ATTEMPTS", 2)
    storage._client.cache_clear()
    started = time.monotonic()
    try:
        with pytest.raises(storage.StorageError, match="did not answer .*2 attempts"):
            with storage.exclusive("s3://b/run/writer.lock", "s3://b/run"):
                pass
    finally:
        silent.close()
        storage._client.cache_clear()
    assert time.monotonic() - started < 10  # botocore's defaults: minutes
