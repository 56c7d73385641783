"""Run roots that are local folders or `s3://bucket/prefix` URIs.

Every stage reads and writes through these functions, so a run moves between a laptop and a
cluster by changing its root. S3 clients are built in one place from the standard AWS variables:
the endpoint from AWS_ENDPOINT_URL_S3 (else AWS_ENDPOINT_URL; an S3-compatible server such as
moto or MinIO), the region from AWS_REGION / AWS_DEFAULT_REGION (default us-east-1), and the
credentials from boto3's usual chain. pyarrow (and so Ray Train and Ray Data) is handed the
same endpoint, region and credentials, so both clients see the same objects.

boto3 and pyarrow are imported on first use: local runs never pay for them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import pyarrow.fs

SCHEME = "s3://"
DEFAULT_REGION = "us-east-1"
CACHE_ENV = "TKRE_CACHE_DIR"

PathLike = str | os.PathLike


def is_s3(uri: PathLike) -> bool:
    return str(uri).startswith(SCHEME)


def join(root: PathLike, *parts: str) -> str:
    """root/part/...; parts are relative (leading slashes ignored), and S3 keys get no '//'."""
    pieces = [p.strip("/") for p in parts if p.strip("/")]
    if not is_s3(root):
        return str(Path(root).joinpath(*pieces))
    segments = [s for s in "/".join([str(root)[len(SCHEME):], *pieces]).split("/") if s]
    if not segments:
        raise ValueError(f"not an S3 URI with a bucket: {root!r}")
    return SCHEME + "/".join(segments)


def _split(uri: PathLike) -> tuple[str, str]:
    """s3://bucket/a/b -> ("bucket", "a/b"); the key has no leading, trailing or double '/'."""
    bucket, _, key = join(uri)[len(SCHEME):].partition("/")
    return bucket, key


# --- clients -------------------------------------------------------------------------------

def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


# Everything that changes which client s3_client() builds; a change (a test's monkeypatch, a
# new profile) gets a new client.
_CLIENT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
               "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


def s3_client() -> Any:
    """A boto3 S3 client for the configured endpoint, region and credentials.

    Building one takes ~0.2 s, so it is cached per process and per AWS environment (boto3
    clients are thread-safe; a forked child builds its own rather than share sockets).
    """
    return _client(os.getpid(), tuple(os.environ.get(name) for name in _CLIENT_ENV))


@functools.lru_cache(maxsize=4)
def _client(pid: int, env: tuple[str | None, ...]) -> Any:
    import boto3
    from botocore.config import Config

    endpoint = _endpoint()
    # pyarrow addresses buckets by path when given an endpoint, and most S3-compatible servers
    # only understand that; boto3 is told the same so both behave alike.
    config = Config(s3={"addressing_style": "path"}) if endpoint else None
    return boto3.session.Session(region_name=_region()).client(
        "s3", endpoint_url=endpoint, config=config)


def arrow_filesystem(uri: PathLike) -> tuple[pyarrow.fs.FileSystem, str]:
    """(filesystem, path inside it): local -> absolute path; s3 -> "bucket/key"."""
    import pyarrow.fs as pafs

    if not is_s3(uri):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    import boto3

    kwargs: dict[str, Any] = {"region": _region()}
    endpoint = _endpoint()
    if endpoint:
        url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(scheme=url.scheme, endpoint_override=url.netloc + url.path.rstrip("/"))
    # Resolve credentials through boto3 so a profile, SSO or instance role that boto3 finds is
    # the one pyarrow uses too. Temporary credentials are frozen here: build a fresh
    # filesystem per job rather than keeping one for hours.
    credentials = boto3.session.Session(region_name=_region()).get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key,
                      session_token=frozen.token)
    bucket, key = _split(uri)
    return pafs.S3FileSystem(**kwargs), (f"{bucket}/{key}" if key else bucket)


def absolute(uri: PathLike) -> str:
    """An s3:// URI unchanged; a local path made absolute (against this process's cwd)."""
    return str(uri) if is_s3(uri) else os.path.abspath(os.path.expanduser(uri))


def ray_storage(uri: PathLike) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """(storage_path, storage_filesystem) for Ray Train's RunConfig."""
    if not is_s3(uri):
        return absolute(uri), None
    filesystem, path = arrow_filesystem(uri)
    return path, filesystem


def _is_missing(err: Exception) -> bool:
    code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound")


# --- files ---------------------------------------------------------------------------------

def exists(uri: PathLike) -> bool:
    """True for an existing file or folder; on S3 for an object or a non-empty prefix."""
    if not is_s3(uri):
        return Path(uri).exists()
    from botocore.exceptions import ClientError

    bucket, key = _split(uri)
    client = s3_client()
    try:
        if not key:
            client.head_bucket(Bucket=bucket)
            return True
        client.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as err:
        if not _is_missing(err):
            raise
    if not key:
        return False
    try:
        listing = client.list_objects_v2(Bucket=bucket, Prefix=key + "/", MaxKeys=1)
    except ClientError as err:
        if _is_missing(err):
            return False
        raise
    return listing.get("KeyCount", 0) > 0


def read_text(uri: PathLike) -> str:
    """The file's UTF-8 text; a missing file raises FileNotFoundError for both kinds."""
    if not is_s3(uri):
        return Path(uri).read_text(encoding="utf-8")
    from botocore.exceptions import ClientError

    bucket, key = _split(uri)
    try:
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as err:
        if _is_missing(err):
            raise FileNotFoundError(f"no such object: {join(uri)}") from err
        raise
    return body.read().decode("utf-8")


def write_text(uri: PathLike, text: str) -> None:
    """Write UTF-8 text; readers see the old or the new content, never a partial file."""
    write_bytes(uri, text.encode("utf-8"))


def write_bytes(uri: PathLike, data: bytes) -> None:
    """Write a file atomically (an S3 PUT is atomic already; locally: temp file + rename)."""
    if is_s3(uri):
        bucket, key = _split(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp file sits beside the target so os.replace stays on one filesystem (atomic).
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(uri: PathLike, table: Any) -> None:
    """Write a pyarrow Table as one Parquet file, atomically (see write_bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_bytes(uri, buffer.getvalue().to_pybytes())


def read_json(uri: PathLike) -> Any:
    return json.loads(read_text(uri))


def write_json(uri: PathLike, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _listing(uri: PathLike) -> list[dict[str, Any]]:
    """The S3 objects under the prefix uri/ (folder markers left out)."""
    bucket, key = _split(uri)
    prefix = f"{key}/" if key else ""
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj | {"Rel": obj["Key"][len(prefix):]}
            for page in pages for obj in page.get("Contents", [])
            if not obj["Key"].endswith("/")]


def list_files(uri: PathLike) -> list[str]:
    """Files under the folder or prefix, recursively, as sorted '/'-separated relative paths."""
    if is_s3(uri):
        return sorted(obj["Rel"] for obj in _listing(uri))
    root = Path(uri)
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def versions(uri: PathLike) -> dict[str, Any]:
    """{file name: version marker} of the files directly in a folder or prefix (not deeper):
    the ETag on S3, (mtime, size) locally. A changed marker means a changed file."""
    if is_s3(uri):
        return {obj["Rel"]: obj["ETag"] for obj in _listing(uri) if "/" not in obj["Rel"]}
    try:
        with os.scandir(uri) as entries:
            return {e.name: (e.stat().st_mtime_ns, e.stat().st_size) for e in entries
                    if e.is_file()}
    except FileNotFoundError:
        return {}


def delete(uri: PathLike) -> None:
    """Remove one file or object; a missing one is not an error."""
    if is_s3(uri):
        bucket, key = _split(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)
    else:
        Path(uri).unlink(missing_ok=True)


def upload_dir(local_dir: PathLike, uri: PathLike) -> None:
    """Copy every file under local_dir to uri (S3 prefix or folder), keeping relative paths."""
    if not Path(local_dir).is_dir():
        raise NotADirectoryError(f"not a folder: {local_dir}")
    if not is_s3(uri):
        shutil.copytree(local_dir, uri, dirs_exist_ok=True)
        return
    client = s3_client()
    bucket, _ = _split(uri)
    for rel in list_files(local_dir):
        client.upload_file(str(Path(local_dir, rel)), bucket, _split(join(uri, rel))[1])


def download_dir(uri: PathLike, local_dir: PathLike) -> None:
    """Copy every file under uri (S3 prefix or folder) into local_dir, keeping relative paths."""
    if not is_s3(uri):
        shutil.copytree(uri, local_dir, dirs_exist_ok=True)
        return
    _download(uri, _listing(uri), Path(local_dir))


def replace_dir(local_dir: PathLike, uri: PathLike) -> None:
    """Make uri hold exactly the files of local_dir (an exported model, say).

    Locally the new folder is staged beside the target and swapped in by rename, so a reader
    sees the old or the new folder whole. On S3 the new files are uploaded first, then keys the
    new folder does not have are deleted.
    """
    if not is_s3(uri):
        target = Path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
        shutil.copytree(local_dir, staged, dirs_exist_ok=True)
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():
            os.rename(target, old)
        os.rename(staged, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    keep = set(list_files(local_dir))
    upload_dir(local_dir, uri)
    stale = [obj["Key"] for obj in _listing(uri) if obj["Rel"] not in keep]
    bucket, _ = _split(uri)
    for start in range(0, len(stale), 1000):
        s3_client().delete_objects(Bucket=bucket, Delete={
            "Objects": [{"Key": key} for key in stale[start:start + 1000]]})


def _download(uri: PathLike, listing: list[dict[str, Any]], local_dir: Path) -> None:
    client = s3_client()
    bucket, _ = _split(uri)
    for obj in listing:
        dest = local_dir / obj["Rel"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, obj["Key"], str(dest))


def local_copy(uri: PathLike) -> Path:
    """A local folder with the files under uri: the path itself, or a cached S3 download.

    The cache folder is named after the remote listing (keys, sizes, ETags), so an unchanged
    prefix is not downloaded again and a changed one lands in a new folder. Downloads go to a
    temp folder renamed into place, so concurrent callers never see a partial copy.
    """
    if not is_s3(uri):
        return Path(uri)
    uri = join(uri)
    listing = _listing(uri)
    if not listing:
        raise FileNotFoundError(f"no objects under {uri}")
    signature = json.dumps(sorted((o["Rel"], o["Size"], o["ETag"]) for o in listing))
    base = (Path(os.environ.get(CACHE_ENV) or "~/.cache/tkre").expanduser() / "s3"
            / hashlib.sha256(uri.encode()).hexdigest()[:16])
    target = base / hashlib.sha256(signature.encode()).hexdigest()[:16]
    if target.is_dir():
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
    try:
        _download(uri, listing, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a lost race with another process: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Older versions of this prefix are stale now; a reader that still holds one keeps its
    # open files (POSIX), and a failed removal only costs disk space.
    for old in base.iterdir():
        if old != target and not old.name.startswith(".tmp-"):
            shutil.rmtree(old, ignore_errors=True)
    return target
