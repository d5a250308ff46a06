"""Object-store data roots (`s3://bucket/prefix`, `gs://`, `az://`): the store's files as
objects, through obstore (docs/decisions.md says why obstore).

What the local code gets from the filesystem, it gets here another way:
- a file visible whole or not at all: written to a local temp file, then one PUT of the finished
  file (S3 never lists an object before its PUT completed); no temp objects, nothing to sweep;
- a read-modify-write that loses no concurrent change: `update_json` reads with the ETag and
  writes with If-Match (If-None-Match for the first write), re-reading and re-applying on a
  refusal: optimistic concurrency instead of flock;
- the lock that serialises a few multi-object operations (prepare, unseal): `lease_lock`, an
  object created with If-None-Match and taken over once its lease ran out;
- reading one version: range GETs pinned to the ETag of a HEAD or listing (If-Match), so a
  reader never applies one PUT's footer to another's pages (store/object_reads.py).

Credentials and endpoints come only from the environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL,
AWS_REGION, AWS_ALLOW_HTTP, GOOGLE_*, AZURE_*), as obstore reads them: nothing about them is
written to a file, a message or metadata. obstore is imported only when an object root is used,
so local roots pay nothing for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from dd_assets.errors import StoreError

# the schemes a data root may have (obstore's URL schemes)
SCHEMES = ("s3", "s3a", "gs", "az", "abfs", "abfss")
LEASE_S = 30.0  # a lock object older than this is taken over (its holder died)
_RETRIES = 50  # conditional-write attempts before giving up (each re-reads the object)


class ObjectStoreError(StoreError):
    """An object-store root cannot be used (unknown scheme, endpoint, bucket, credentials,
    library missing); the message names the root and the fix."""


class ObjectPath(PurePosixPath):
    """A location in an object store, `s3://bucket/key...`. Joins, `.name`, `.parent` and
    `.with_name` work as on a local path; `os.fspath` refuses, so a local-file call that was
    not routed through `store.files` fails loudly instead of writing a file named `s3:`."""

    @property
    def scheme(self) -> str:
        return self.parts[0].rstrip(":")

    @property
    def bucket(self) -> str:
        return self.parts[1] if len(self.parts) > 1 else ""

    @property
    def key(self) -> str:
        return "/".join(self.parts[2:])

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.bucket}" + (f"/{self.key}" if self.key else "")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"ObjectPath({self.url!r})"

    def __fspath__(self) -> str:
        raise TypeError(f"{self.url} is an object, not a local file")


def parse_root(text: str) -> ObjectPath:
    scheme, _, rest = text.partition("://")
    if scheme.lower() not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ObjectStoreError(
            f"data root {text!r}: unknown scheme {scheme + '://'!r}; use a local folder, file://,"
            f" or one of {known} (set DD_ASSETS_ROOT or the store resource's root)"
        )
    bucket, _, prefix = rest.strip("/").partition("/")
    if not bucket:
        raise ObjectStoreError(
            f"data root {text!r} names no bucket; write it as {scheme}://<bucket>/<prefix>"
        )
    return ObjectPath(f"{scheme.lower()}:", bucket, *[p for p in prefix.split("/") if p])


# ---- clients ---------------------------------------------------------------------------------

_clients: dict[tuple[str, str], Any] = {}
_checked: set[str] = set()
_mutex = threading.Lock()


def _obstore() -> Any:
    try:
        import obstore
        import obstore.store
    except ImportError:
        raise ObjectStoreError(
            "object-store data roots need obstore: pip install 'dd-assets[object-store]'"
        ) from None
    return obstore


def client(path: ObjectPath) -> Any:
    """The obstore store of a bucket (one per bucket and process; configured from the env)."""
    key = (path.scheme, path.bucket)
    with _mutex:
        found = _clients.get(key)
        if found is None:
            obs = _obstore()
            try:
                found = obs.store.from_url(
                    f"{path.scheme}://{path.bucket}",
                    # a few quick retries: a flaky request recovers, a wrong endpoint is an
                    # error within seconds (obstore's default keeps trying for 3 minutes)
                    retry_config={
                        "max_retries": 4,
                        "retry_timeout": timedelta(seconds=60),
                        "backoff": {
                            "init_backoff": timedelta(milliseconds=100),
                            "max_backoff": timedelta(seconds=5),
                            "base": 2.0,
                        },
                    },
                )
            except Exception as exc:
                raise ObjectStoreError(
                    f"data root {path.url}: cannot be opened ({_first_line(exc)}); check the"
                    " AWS_*/GOOGLE_*/AZURE_* environment variables"
                ) from None
            _clients[key] = found
        return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def explain(root: ObjectPath, exc: BaseException) -> ObjectStoreError:
    """One user-facing error for a failed request: what is wrong with the root and the fix."""
    text = str(exc)
    name = type(exc).__name__
    if "NoSuchBucket" in text:
        why = f"bucket {root.bucket!r} does not exist; create it or fix the root"
    elif "169.254.169.254" in text or "/latest/api/token" in text:
        # no credential in the environment: obstore fell back to the instance metadata service
        why = (
            "no credentials: none in the environment and no instance metadata to fall back on;"
            " set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / a role) in the"
            " environment of every process that uses the root"
        )
    elif name in ("UnauthenticatedError", "PermissionDeniedError") or any(
        s in text
        for s in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "credential")
    ):
        why = (
            "the credentials were refused or are missing; set AWS_ACCESS_KEY_ID and"
            " AWS_SECRET_ACCESS_KEY (or the role/profile variables) in the environment"
        )
    elif any(
        s in text.lower()
        for s in ("connect", "dns", "timed out", "timeout", "error sending request", "tcp")
    ):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or ""
        where = f" at {endpoint}" if endpoint else ""
        why = (
            f"the endpoint{where} cannot be reached; check AWS_ENDPOINT_URL (and AWS_ALLOW_HTTP=true"
            " for an http:// endpoint) and the network"
        )
    else:
        why = _first_line(exc)
    return ObjectStoreError(f"data root {root.url}: {why}")


def check_root(root: ObjectPath) -> None:
    """One cheap request the first time a root is used in a process, so a wrong endpoint,
    bucket or credential is one clear error, not a failure deep inside a run."""
    if root.url in _checked:
        return
    obs = _obstore()
    try:
        obs.list_with_delimiter(client(root), root.key or None)
    except ObjectStoreError:
        raise
    except Exception as exc:
        raise explain(root, exc) from None
    _checked.add(root.url)


@contextlib.contextmanager
def _errors(path: ObjectPath) -> Iterator[None]:
    try:
        yield
    except (ObjectStoreError, FileNotFoundError):
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("obstore"):
            raise explain(path, exc) from None
        raise


# ---- objects ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    name: str
    path: ObjectPath
    e_tag: str
    size: int


def get(path: ObjectPath) -> tuple[bytes, str] | None:
    """(content, ETag), None when there is no such object."""
    obs = _obstore()
    with _errors(path):
        try:
            result = obs.get(client(path), path.key)
        except FileNotFoundError:
            return None
        return bytes(result.bytes()), str(result.meta.get("e_tag") or "")


def read_range(path: ObjectPath, start: int, end: int, e_tag: str) -> bytes:
    """Bytes [start, end) of the version of the object whose ETag is `e_tag` (If-Match; a
    store that gives no ETag cannot pin it); `ObjectReplacedError` if another PUT has replaced
    it since, FileNotFoundError if it is gone. A bounded range, not a suffix: Azure's blob
    service takes no suffix ranges."""
    obs = _obstore()
    from obstore.exceptions import PreconditionError

    options: dict[str, Any] = {"range": (start, end)}
    if e_tag:
        options["if_match"] = e_tag
    with _errors(path):
        try:
            return bytes(obs.get(client(path), path.key, options=options).bytes())
        except PreconditionError:
            raise ObjectReplacedError(path) from None


class ObjectReplacedError(StoreError):
    """The object was replaced (another run's PUT) between two reads that must see one version
    of it. Readers start over on the new version where nothing was handed on yet; escaping, it
    is the user's error line: the reader saw nothing mixed, and a rerun reads the new version."""

    def __init__(self, path: ObjectPath, why: str = "") -> None:
        self.path, self.why = path, why
        super().__init__(
            f"{path} was replaced by another run's write while it was being read"
            f"{why}; nothing of two versions was mixed: rerun to read the new one"
            " (overlapping runs of one stage write the same row groups: docs/scaling.md)"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (a run worker's error) with its own args
        return type(self), (self.path, self.why)


def version(path: ObjectPath) -> tuple[str, int]:
    """(ETag, size) of the object as it is now (a HEAD); FileNotFoundError if there is none."""
    entry = head(path)
    if entry is None:
        raise FileNotFoundError(str(path))
    return entry.e_tag, entry.size


def head(path: ObjectPath) -> Entry | None:
    obs = _obstore()
    with _errors(path):
        try:
            meta = obs.head(client(path), path.key)
        except FileNotFoundError:
            return None
    return Entry(path.name, path, str(meta.get("e_tag") or ""), int(meta["size"]))


def put(path: ObjectPath, data: bytes | Path, mode: Any = None) -> str:
    """One PUT (never multipart: a conditional PUT cannot be one); returns the new ETag.
    Raises FileExistsError / PreconditionFailed as `Conflict` for a refused conditional write."""
    obs = _obstore()
    from obstore.exceptions import AlreadyExistsError, PreconditionError

    with _errors(path):
        try:
            result = obs.put(client(path), path.key, data, mode=mode, use_multipart=False)
        except (AlreadyExistsError, PreconditionError) as exc:
            raise Conflict(str(path)) from exc
    return str(result.get("e_tag") or "")


class Conflict(Exception):
    """A conditional write was refused: someone else wrote the object first."""


def listing(folder: ObjectPath) -> tuple[list[Entry], list[str]]:
    """(objects directly in `folder`, names of its sub-folders)."""
    obs = _obstore()
    prefix = folder.key + "/" if folder.key else ""
    with _errors(folder):
        out = obs.list_with_delimiter(client(folder), prefix or None)
    entries = []
    for meta in out["objects"]:
        name = meta["path"].rsplit("/", 1)[-1]
        entries.append(Entry(name, folder / name, str(meta.get("e_tag") or ""), int(meta["size"])))
    subs = [p.rstrip("/").rsplit("/", 1)[-1] for p in out["common_prefixes"]]
    return entries, subs


def walk(folder: ObjectPath) -> list[ObjectPath]:
    """Every object under `folder`, at any depth."""
    obs = _obstore()
    prefix = folder.key + "/" if folder.key else ""
    root = ObjectPath(f"{folder.scheme}:", folder.bucket)
    with _errors(folder):
        metas = obs.list(client(folder), prefix or None).collect()
    return [root / m["path"] for m in metas]


def delete(path: ObjectPath) -> None:
    obs = _obstore()
    with _errors(path), contextlib.suppress(FileNotFoundError):
        obs.delete(client(path), path.key)


def move_tree(src: ObjectPath, dst: ObjectPath) -> None:
    """Copy every object under `src` to `dst`, then delete the originals. Not atomic (object
    stores have no rename): a crash in between leaves whole objects in both places, each still
    a valid row group, and nothing deleted that was not copied first."""
    obs = _obstore()
    objects = walk(src)
    n = len(src.parts)
    with _errors(src):
        for p in objects:
            obs.copy(client(p), p.key, (dst / "/".join(p.parts[n:])).key)
        for p in objects:
            delete(p)


@contextlib.contextmanager
def upload(
    target: ObjectPath,
    commit: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> Iterator[Path]:
    """Yield a local temp path to write; on success its content becomes `target` with one PUT
    inside `commit()`. The temp file is local, so a crash leaves nothing in the bucket."""
    fd, name = tempfile.mkstemp(prefix=f"dd-upload-{target.name}.", dir=_tmp_dir())
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if not tmp.stat().st_size:  # pre-created empty: the writer wrote nothing
            raise FileNotFoundError(f"nothing was written to {tmp} for {target}")
        with commit():
            put(target, tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _tmp_dir() -> str | None:
    return os.environ.get("DD_ASSETS_TMPDIR") or None


def update_json(
    path: ObjectPath, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
) -> dict[str, Any] | None:
    """Read-modify-write of a JSON object that loses no concurrent change: `change(current)`
    (None: no object yet) returns the new content (None: leave it); written with If-Match on
    the ETag read (If-None-Match: * when there was none); on a refusal, read and apply again."""
    for attempt in range(_RETRIES):
        found = get(path)
        current = None if found is None else json.loads(found[0])
        new = change(current)
        if new is None:
            return current
        text = json.dumps(new, indent=2, sort_keys=True, default=str) + "\n"
        mode: Any = "create" if found is None else {"e_tag": found[1]}
        try:
            put(path, text.encode(), mode=mode)
            return new
        except Conflict:
            time.sleep(min(0.01 * 2**attempt, 0.5))
    raise ObjectStoreError(
        f"{path}: {_RETRIES} conditional writes in a row were refused (other writers kept"
        " changing it); nothing was lost, rerun"
    )


@contextlib.contextmanager
def lease_lock(path: ObjectPath, wait_s: float = 300.0) -> Iterator[None]:
    """An exclusive lock for the few multi-object operations (prepare, unseal, approvals): an
    object created with If-None-Match; a lock whose holder died is taken over (If-Match) once
    its lease (LEASE_S) ran out. Correctness never rests on it alone: stage.json is written
    with If-Match and the seal is checked after each row-group PUT."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    delay = 0.02
    while True:
        body = json.dumps({"owner": owner, "expires": time.time() + LEASE_S}).encode()
        try:
            put(path, body, mode="create")
            break
        except Conflict:
            pass
        found = get(path)
        if found is not None:
            try:
                expires = float(json.loads(found[0]).get("expires", 0))
            except (ValueError, AttributeError):
                expires = 0.0
            if expires < time.time():
                with contextlib.suppress(Conflict):
                    put(path, body, mode={"e_tag": found[1]})
                    break
        if time.monotonic() > deadline:
            raise ObjectStoreError(
                f"lock {path} has been held for more than {wait_s:.0f} s; if no dd-assets run is"
                f" working on this stage, delete that object and rerun"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    try:
        yield
    finally:
        found = get(path)
        if found is not None and json.loads(found[0]).get("owner") == owner:
            delete(path)
