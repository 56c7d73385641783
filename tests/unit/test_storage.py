"""tkre.storage on local roots and on s3:// roots served by an in-process moto server."""

from __future__ import annotations

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
