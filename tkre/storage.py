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

import contextlib
import datetime
import email.utils
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import pyarrow.fs

SCHEME = "s3://"
DEFAULT_REGION = "us-east-1"
CACHE_ENV = "TKRE_CACHE_DIR"

PathLike = str | os.PathLike

# An S3 endpoint that does not answer fails within about attempts x timeout seconds (botocore's
# defaults: minutes). The read timeout is per socket read: a long transfer that keeps moving
# is never cut.
S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 10.0
S3_ATTEMPTS = 3  # boto3's "standard" retry mode, which also backs off on throttling


class StorageError(Exception):
    """A run root that cannot be used (no credentials, no answer, not writable, in use)."""


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
    config = Config(connect_timeout=S3_CONNECT_TIMEOUT_S, read_timeout=S3_READ_TIMEOUT_S,
                    retries={"mode": "standard", "total_max_attempts": S3_ATTEMPTS},
                    s3={"addressing_style": "path"} if endpoint else None)
    return boto3.session.Session(region_name=_region()).client(
        "s3", endpoint_url=endpoint, config=config)


def arrow_filesystem(uri: PathLike) -> tuple[pyarrow.fs.FileSystem, str]:
    """(filesystem, path inside it): local -> absolute path; s3 -> "bucket/key"."""
    import pyarrow.fs as pafs

    if not is_s3(uri):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    import boto3

    # Ray Train moves checkpoints through this client mid-run: its own retries stay; a dead
    # endpoint has already failed the job's first request (the root's lock, through boto3).
    kwargs: dict[str, Any] = {"region": _region(), "connect_timeout": S3_CONNECT_TIMEOUT_S}
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
    code = str((getattr(err, "response", None) or {}).get("Error", {}).get("Code", ""))
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


# --- errors a user can cause -------------------------------------------------------------------

def s3_problem(err: BaseException) -> str | None:
    """One line for an S3 client failure a user can fix (credentials, endpoint, permissions,
    bucket); None for anything else."""
    if not type(err).__module__.startswith("botocore"):
        return None
    from botocore import exceptions as bx

    endpoint = _endpoint() or "AWS S3"
    if isinstance(err, bx.NoCredentialsError | bx.PartialCredentialsError):
        return ("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                "AWS_PROFILE, or give the machine a role)")
    if isinstance(err, bx.ConnectTimeoutError | bx.ReadTimeoutError | bx.EndpointConnectionError):
        return (f"the S3 endpoint {endpoint} did not answer ({S3_ATTEMPTS} attempts, "
                f"{S3_CONNECT_TIMEOUT_S:.0f} s to connect, {S3_READ_TIMEOUT_S:.0f} s to read): "
                "check AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL and the network")
    if isinstance(err, bx.ClientError):
        error = err.response.get("Error", {})
        return (f"S3 ({endpoint}) refused {err.operation_name}: "
                f"{error.get('Code', '?')}: {error.get('Message', '')}".rstrip(": "))
    if isinstance(err, bx.BotoCoreError):
        return f"S3 ({endpoint}): {' '.join(str(err).split())}"
    return None


# --- one writer per root -----------------------------------------------------------------------
# A job that writes a run root holds that root's lock file for as long as it runs: locally an
# OS lock (fcntl.flock; the kernel drops it when the process dies), on S3 a lease object created
# with a conditional PUT (If-None-Match: *), renewed while the job runs; a lease that has not
# been renewed for its lease_s (by the server's clock) is stale and may be taken over. Within
# one process the lock is re-entrant, so a pipeline holding it runs stages that take it again.

LEASE_S = 600.0  # an S3 lease not renewed for this long is stale (renewed every third of it)
_HELD: dict[str, list] = {}  # lock key -> [depth, release callable]
_HELD_GUARD = threading.Lock()


def _holder() -> dict[str, Any]:
    return {"owner": uuid.uuid4().hex, "pid": os.getpid(), "host": socket.gethostname(),
            "command": " ".join(Path(sys.argv[0]).name.split()) if sys.argv else "",
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _in_use(name: str, holder: dict[str, Any] | None, how: str) -> StorageError:
    who = ("another job" if not holder else
           f"{holder.get('command') or 'a job'} (pid {holder.get('pid')} on "
           f"{holder.get('host')}, since {holder.get('since')})")
    return StorageError(f"{name} is in use by {who}: one job writes a root at a time; wait "
                        f"for it, or use another --root ({how})")


@contextlib.contextmanager
def exclusive(lock_uri: PathLike, name: str, lease_s: float = LEASE_S) -> Iterator[None]:
    """Hold the lock file `lock_uri` (of the root `name`) for the block: StorageError at once
    when another process holds it, or when the root cannot be written."""
    key = join(lock_uri) if is_s3(lock_uri) else os.path.realpath(lock_uri)
    with _HELD_GUARD:
        if key in _HELD:
            _HELD[key][0] += 1
        else:
            release = (_S3Lease(key, name, lease_s) if is_s3(key)
                       else _local_lock(Path(key), name))
            _HELD[key] = [1, release]
    try:
        yield
    finally:
        with _HELD_GUARD:
            _HELD[key][0] -= 1
            done = _HELD[key][0] == 0
            release = _HELD.pop(key)[1] if done else None
        if release is not None:
            release()


def _local_lock(path: Path, name: str) -> Callable[[], None]:
    """flock the file; the returned callable releases it."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "permission denied")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except (FileExistsError, NotADirectoryError):
        raise StorageError(f"{name} is (or lies under) a file, not a folder: give a folder "
                           "or s3://bucket/prefix as the root") from None
    except OSError as err:
        raise StorageError(f"{name} is not writable: {err.strerror or err}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"null")
        except ValueError:
            holder = None
        os.close(fd)
        raise _in_use(name, holder, f"lock file {path}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_holder()).encode(), 0)

    def release() -> None:
        os.ftruncate(fd, 0)  # the file stays: removing a locked file races with its next user
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    return release


class _S3Lease:
    """A lease object on S3: taken by a conditional PUT, renewed by a daemon thread, deleted
    on release. Calling the instance releases it."""

    def __init__(self, uri: str, name: str, lease_s: float):
        self.uri, self.name, self.lease_s = uri, name, lease_s
        self.bucket, self.key = _split(uri)
        self.holder = _holder() | {"lease_s": lease_s}
        self.body = json.dumps(self.holder).encode()
        try:
            self.etag = self._take()
        except Exception as err:
            problem = s3_problem(err)
            if problem is None:
                raise
            raise StorageError(f"{name}: {problem}") from None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True, name="tkre-lease")
        self._thread.start()

    def _take(self) -> str:
        """The new lease's ETag; StorageError when a live lease is there."""
        client = s3_client()
        for _ in range(3):  # a lease deleted or taken over meanwhile: look again
            try:
                return client.put_object(Bucket=self.bucket, Key=self.key, Body=self.body,
                                         IfNoneMatch="*")["ETag"]
            except Exception as err:
                if not _precondition_failed(err):
                    raise
            try:
                holder, etag, age_s = self._read()
            except Exception as err:
                if _is_missing(err):
                    continue
                raise
            if holder is not None and age_s < float(holder.get("lease_s", LEASE_S)):
                raise _in_use(self.name, holder, f"lease {self.uri}, renewed {age_s:.0f} s ago")
            try:  # stale (or unreadable): take it over, unless someone else just did
                return client.put_object(Bucket=self.bucket, Key=self.key, Body=self.body,
                                         IfMatch=etag)["ETag"]
            except Exception as err:
                if not (_precondition_failed(err) or _is_missing(err)):
                    raise
        raise _in_use(self.name, None, f"lease {self.uri} kept changing hands")

    def _read(self) -> tuple[dict | None, str, float]:
        """(holder or None when unreadable, ETag, seconds since last renewal, server clock)."""
        response = s3_client().get_object(Bucket=self.bucket, Key=self.key)
        try:
            holder = json.loads(response["Body"].read())
        except ValueError:
            holder = None
        date = response["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        now = (email.utils.parsedate_to_datetime(date) if date
               else datetime.datetime.now(datetime.UTC))
        age_s = (now - response["LastModified"]).total_seconds()
        return (holder if isinstance(holder, dict) else None), response["ETag"], age_s

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.etag = s3_client().put_object(Bucket=self.bucket, Key=self.key,
                                                   Body=self.body, IfMatch=self.etag)["ETag"]
            except Exception as err:  # keep running: the job itself is not at fault
                print(f"[storage] warning: could not renew the lease {self.uri}: "
                      f"{s3_problem(err) or err}", flush=True)

    def __call__(self) -> None:
        self._stop.set()
        self._thread.join()
        try:  # delete only our own lease (not one taken over after ours went stale)
            holder, _, _ = self._read()
            if holder is not None and holder.get("owner") == self.holder["owner"]:
                s3_client().delete_object(Bucket=self.bucket, Key=self.key)
        except Exception as err:
            print(f"[storage] warning: could not release the lease {self.uri}: "
                  f"{s3_problem(err) or err}; it goes stale in {self.lease_s:.0f} s", flush=True)


def _precondition_failed(err: Exception) -> bool:
    code = str((getattr(err, "response", None) or {}).get("Error", {}).get("Code", ""))
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
