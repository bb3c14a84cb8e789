"""S3-compatible object storage for data sets, checkpoints and reports (MinIO client).

Every pipeline step reads and writes artifacts through this module, so it owns the rules that keep them
safe:

- URIs are ``s3://bucket/key``; :func:`parse_s3_uri` turns one into an :class:`S3Uri`.
- Folders are uploaded and downloaded in parallel, each file with retries; every object carries its
  SHA-256 in the ``x-amz-meta-sha256`` header and downloads are checked against it.
- Publish-then-marker: :meth:`ObjectStore.upload_folder` first removes the prefix's ``_SUCCESS`` marker,
  uploads every file, and only then writes a new marker listing each file with its size and checksum.
  Readers (:meth:`ObjectStore.download_folder`, :meth:`ObjectStore.sync_to_local`) refuse a prefix without
  a marker and fetch exactly the files it lists, so nobody sees half a data set.
- Replace-in-place without a gap: a folder rewritten while it is read back after a crash (a training
  run's ``checkpoints/``) goes through :meth:`ObjectStore.replace_folder`, which first publishes the new
  set whole under ``<folder>.incoming/`` (its own marker), and only then moves it into the folder. At
  every moment one of the two holds a complete, marked set (the previous or the new one), whatever
  instant the writer is killed at; :meth:`ObjectStore.complete_versions` names them newest first and
  :meth:`ObjectStore.fetch_version` downloads one, each file checked against its marker.
- Selective reads: :meth:`ObjectStore.sync_to_local` takes ``include`` (relative files or folders, e.g.
  ``JPEGImages/<video>``), so a step fetches only the videos and parts it reads, still checked against the
  marker.
- Every store counts what it moves (:attr:`ObjectStore.counters`: bytes and objects downloaded and
  uploaded), so a step can report, and a test or benchmark can check, how much crossed the network.
- Errors say what went wrong in user terms: a rejected credential (:class:`StorageAuthError`), an endpoint
  that cannot be reached or stops answering (:class:`StorageUnreachableError`, naming the endpoint),
  a missing object (:class:`StorageNotFoundError`), a checksum mismatch (:class:`StorageIntegrityError`),
  an unfinished publish (:class:`IncompletePublishError`).

Configuration comes from the environment (:meth:`S3Settings.from_env`):

``S3_ENDPOINT_URL``
    ``http(s)://host:port`` of the server, e.g. ``http://127.0.0.1:8333`` for ``make services-up``.
    ``AWS_ENDPOINT_URL_S3`` and ``AWS_ENDPOINT_URL`` are read when it is unset; without any of them the
    client talks to AWS S3 (``https://s3.amazonaws.com``).
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
    The key pair. Required.
``AWS_SESSION_TOKEN``
    Optional, for temporary credentials.
``AWS_REGION`` (or ``AWS_DEFAULT_REGION``)
    Optional; ``us-east-1`` by default (SeaweedFS and MinIO accept any region).

The secret key and session token are never logged, never part of a ``repr`` and never put into an error
message; the access key id appears only shortened (``AKIA…``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.error import InvalidResponseError, S3Error, ServerError
from tqdm import tqdm

from sam2.utils.atomic_io import atomic_open, atomic_write_bytes
from sam2.utils.file_hashing import sha256_of_file
from sam2.utils.retry import RETRY_BUDGET_ENV, Backoff, retry_budget_s

logger = logging.getLogger(__name__)

MARKER_NAME = "_SUCCESS"
"""Name of the completion marker written last under a published prefix."""

INCOMING_SUFFIX = ".incoming"
"""Suffix of the sibling prefix :meth:`ObjectStore.replace_folder` publishes a new set under first."""

CHECKSUM_META_KEY = "sha256"
"""User metadata key holding an object's SHA-256 (sent as ``x-amz-meta-sha256``)."""

_AUTH_ERROR_CODES = frozenset(
    {
        "AccessDenied",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"})
_HASH_CHUNK = 1 << 20

T = TypeVar("T")


class StorageError(RuntimeError):
    """Base class of every error raised by this module."""


class StorageAuthError(StorageError):
    """The server rejected the credentials (wrong key pair, expired token, missing permission)."""


class StorageUnreachableError(StorageError):
    """The endpoint could not be reached, or stopped answering, after all retries."""


class StorageNotFoundError(StorageError):
    """A bucket or object does not exist."""


class StorageIntegrityError(StorageError):
    """Downloaded bytes do not match the checksum recorded for the object."""


class IncompletePublishError(StorageError):
    """A prefix has no completion marker: its upload is unfinished, failed, or still in progress."""


@dataclass(frozen=True)
class S3Uri:
    """A parsed ``s3://bucket/key`` URI; ``key`` has no leading slash and may be empty (bucket root)."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    def join(self, *parts: str) -> S3Uri:
        """This URI with ``parts`` appended as ``/``-separated path segments."""
        segments = [self.key.strip("/")] + [p.strip("/") for p in parts]
        return S3Uri(self.bucket, "/".join(s for s in segments if s))

    @property
    def prefix(self) -> str:
        """The key as a folder prefix: empty for the bucket root, otherwise ending in ``/``."""
        stripped = self.key.strip("/")
        return f"{stripped}/" if stripped else ""


def is_s3_uri(value: str | os.PathLike) -> bool:
    """True when ``value`` is a string starting with ``s3://``."""
    return isinstance(value, str) and value.startswith("s3://")


def parse_s3_uri(uri: str) -> S3Uri:
    """Split ``s3://bucket/some/key`` into bucket and key.

    Raises:
        ValueError: when ``uri`` is not of that form, naming it.
    """
    if not is_s3_uri(uri):
        raise ValueError(f"not an S3 URI: {uri!r}; expected s3://bucket/key")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"S3 URI {uri!r} has no bucket name; expected s3://bucket/key")
    return S3Uri(bucket=bucket, key=key.lstrip("/"))


def _short_key_id(access_key: str) -> str:
    return f"{access_key[:4]}…" if len(access_key) > 4 else "…"


@dataclass(frozen=True)
class S3Settings:
    """Where the server is and how to sign requests. The secret never appears in ``repr``."""

    endpoint_url: str
    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str = "us-east-1"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> S3Settings:
        """Read the settings from the environment variables listed in the module docstring.

        Raises:
            StorageAuthError: when the access key or the secret key is not set.
        """
        env = os.environ if environ is None else environ
        endpoint = (
            env.get("S3_ENDPOINT_URL")
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or "https://s3.amazonaws.com"
        )
        access_key = env.get("AWS_ACCESS_KEY_ID", "")
        secret_key = env.get("AWS_SECRET_ACCESS_KEY", "")
        missing = [
            name
            for name, v in (("AWS_ACCESS_KEY_ID", access_key), ("AWS_SECRET_ACCESS_KEY", secret_key))
            if not v
        ]
        if missing:
            raise StorageAuthError(
                f"no S3 credentials: set {' and '.join(missing)} (for the local server: "
                "`make services-up`, then `source .local/s3.env`)"
            )
        return cls(
            endpoint_url=endpoint,
            access_key=access_key,
            secret_key=secret_key,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        )

    def as_env(self) -> dict[str, str]:
        """The variables that make :meth:`from_env` return these settings (for child processes)."""
        env = {
            "S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env


@dataclass(frozen=True)
class TransferResult:
    """What a folder transfer did: files moved, files already up to date, bytes moved, seconds taken."""

    uri: str
    local_dir: Path
    transferred: int
    skipped: int
    bytes_transferred: int
    seconds: float


def incoming_uri(uri: str) -> str:
    """The sibling prefix :meth:`ObjectStore.replace_folder` publishes a new set of ``uri`` under first."""
    return f"{uri.rstrip('/')}{INCOMING_SUFFIX}"


@dataclass(frozen=True)
class FolderVersion:
    """One complete, marked set of files of a folder written by :meth:`ObjectStore.replace_folder`.

    ``uri``: the prefix whose marker lists the set (the folder, or its ``.incoming`` sibling while a
    replacement is being moved in); ``marker``: that marker; ``sources``: relative path -> URI of the
    object holding the file; ``reason``: in words, why this is the set to read.
    """

    uri: str
    marker: dict
    sources: dict[str, str]
    reason: str

    def describe(self) -> str:
        """``3 files, 8.1 MB: checkpoint.pt (sha256 1a2b3c4d5e6f…), ...`` for a log line."""
        files = self.marker["files"]
        listed = ", ".join(f"{rel} (sha256 {info['sha256'][:12]}…)" for rel, info in sorted(files.items()))
        total = sum(info["size"] for info in files.values())
        published = f", published {self.marker['published_at']}" if self.marker.get("published_at") else ""
        return f"{len(files)} file(s), {total / 1e6:.1f} MB{published}: {listed}"


class TransferCounters:
    """Bytes and objects one store downloaded and uploaded (object bodies; thread-safe).

    Listings, stat calls and the marker reads of a folder sync are requests, not data, and are not
    counted as objects unless their body is read (:meth:`ObjectStore.read_bytes` counts).
    """

    FIELDS = ("bytes_downloaded", "objects_downloaded", "bytes_uploaded", "objects_uploaded")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.FIELDS, 0)

    def add_download(self, size: int) -> None:
        with self._lock:
            self._values["bytes_downloaded"] += size
            self._values["objects_downloaded"] += 1

    def add_upload(self, size: int) -> None:
        with self._lock:
            self._values["bytes_uploaded"] += size
            self._values["objects_uploaded"] += 1

    def snapshot(self) -> dict[str, int]:
        """The four counts as a dict (a copy)."""
        with self._lock:
            return dict(self._values)

    def reset(self) -> dict[str, int]:
        """Zero the counts; returns what they were."""
        with self._lock:
            before, self._values = self._values, dict.fromkeys(self.FIELDS, 0)
        return before

    def __repr__(self) -> str:
        return f"TransferCounters({self.snapshot()})"


def _selector(include: Collection[str] | None) -> Callable[[str], bool]:
    """A predicate on relative paths: True for a path named in ``include`` or inside a folder named there
    (``None``: everything)."""
    if include is None:
        return lambda rel: True
    wanted = {item.strip("/") for item in include if item.strip("/")}

    def selected(rel: str) -> bool:
        parts = rel.split("/")
        return any("/".join(parts[:depth]) in wanted for depth in range(1, len(parts) + 1))

    return selected


def _iter_local_files(root: Path, exclude: Collection[str] = ()) -> Iterator[tuple[str, Path]]:
    """(posix relative path, path) of every regular file under ``root``, sorted; the marker and the
    files or folders named (relative to ``root``) in ``exclude`` are left out."""
    skipped = tuple(e.strip("/") for e in exclude)
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(root).as_posix()
            if rel == MARKER_NAME or any(rel == e or rel.startswith(f"{e}/") for e in skipped):
                continue
            yield rel, path


class ObjectStore:
    """A thin, safe layer over :class:`minio.Minio` for one endpoint and one key pair.

    Args:
        settings: endpoint and credentials; :meth:`S3Settings.from_env` when omitted.
        workers: parallel transfers in folder uploads and downloads.
        retries: extra attempts after a transient failure (connection refused or reset, 5xx, timeouts);
            None (the default) retries for a time budget instead, ``budget_s``.
        backoff_s: first wait between attempts; doubled after each failure (at most 15 s).
        timeout_s: socket connect and read timeout of one request.
        budget_s: with ``retries=None``, how long a request is retried before
            :class:`StorageUnreachableError` (default: ``SAM2_RETRY_BUDGET_S``, 300 s), so that a server
            restart does not end a run.
    """

    def __init__(
        self,
        settings: S3Settings | None = None,
        *,
        workers: int = 8,
        retries: int | None = None,
        backoff_s: float = 0.5,
        timeout_s: float = 30.0,
        budget_s: float | None = None,
    ) -> None:
        self.settings = settings or S3Settings.from_env()
        self.workers = max(1, workers)
        self.retries = None if retries is None else max(0, retries)
        self.budget_s = retry_budget_s() if budget_s is None else max(0.0, budget_s)
        self.backoff_s = backoff_s
        self.counters = TransferCounters()
        parts = urlsplit(self.settings.endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"S3 endpoint {self.settings.endpoint_url!r} is not a URL like http://host:port; "
                "fix S3_ENDPOINT_URL"
            )
        self.endpoint = f"{parts.scheme}://{parts.netloc}"
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout_s, 10.0), read=timeout_s),
            maxsize=self.workers + 2,
            retries=urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0, raise_on_status=False),
        )
        self._client = Minio(
            parts.netloc,
            access_key=self.settings.access_key,
            secret_key=self.settings.secret_key,
            session_token=self.settings.session_token,
            secure=parts.scheme == "https",
            region=self.settings.region,
            http_client=http,
        )

    def __repr__(self) -> str:
        return (
            f"ObjectStore(endpoint={self.endpoint!r}, access_key={_short_key_id(self.settings.access_key)!r})"
        )

    # ---- error handling -------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request with retries on transient failures (a count, or the time budget); translate
        errors into StorageError."""
        delay = self.backoff_s
        backoff = Backoff(self.budget_s, first_s=self.backoff_s) if self.retries is None else None
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return fn()
            except S3Error as err:
                if err.code in _AUTH_ERROR_CODES:
                    raise StorageAuthError(
                        f"S3 server {self.endpoint} rejected the credentials (access key "
                        f"{_short_key_id(self.settings.access_key)}) while {what}: {err.code}. Check "
                        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and the bucket policy)."
                    ) from None
                if err.code in _NOT_FOUND_CODES:
                    raise StorageNotFoundError(f"{what}: {err.code} on {self.endpoint}") from None
                transient = err.response is not None and err.response.status >= 500
                last: BaseException = err
                if not transient:
                    raise StorageError(
                        f"S3 error while {what} on {self.endpoint}: {err.code}: {err.message}"
                    ) from None
            except (urllib3.exceptions.HTTPError, ServerError, InvalidResponseError, OSError) as err:
                last = err
            attempt += 1
            if backoff is not None:
                wait = backoff.next_wait()
            else:
                wait = delay if attempt <= (self.retries or 0) else None
                delay *= 2
            if wait is None:
                break
            logger.warning(
                "attempt %d failed while %s (%s); retrying in %.1fs", attempt, what, type(last).__name__, wait
            )
            time.sleep(wait)
        budget = f", retry budget {RETRY_BUDGET_ENV}={self.budget_s:g} s" if backoff is not None else ""
        reason = last.__class__.__name__
        if isinstance(last, urllib3.exceptions.MaxRetryError) and last.reason is not None:
            reason = f"{type(last.reason).__name__}: {last.reason}"
        elif isinstance(last, S3Error):
            reason = f"{last.code}: {last.message}"
        elif str(last):
            reason = f"{reason}: {last}"
        raise StorageUnreachableError(
            f"S3 endpoint {self.endpoint} did not answer while {what} ({attempt} attempts over "
            f"{time.monotonic() - started:.0f} s{budget}; last: {reason}). Is the server running and "
            "S3_ENDPOINT_URL right? Locally: `make services-up`."
        ) from None

    # ---- buckets and single objects -----------------------------------------------------------

    def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` when it does not exist yet."""
        if not self._call(f"checking bucket {bucket}", lambda: self._client.bucket_exists(bucket)):
            logger.info("creating bucket %s on %s", bucket, self.endpoint)
            try:
                self._call(f"creating bucket {bucket}", lambda: self._client.make_bucket(bucket))
            except StorageError as err:
                if "BucketAlready" not in str(err):
                    raise

    def delete_bucket(self, bucket: str) -> None:
        """Remove an empty bucket."""
        self._call(f"deleting bucket {bucket}", lambda: self._client.remove_bucket(bucket))

    def exists(self, uri: str) -> bool:
        """True when the object at ``uri`` exists."""
        loc = parse_s3_uri(uri)
        try:
            self._call(f"checking {uri}", lambda: self._client.stat_object(loc.bucket, loc.key))
        except StorageNotFoundError:
            return False
        return True

    def list_objects(self, uri: str) -> dict[str, int]:
        """Sizes of every object under the folder ``uri``, keyed by path relative to it."""
        loc = parse_s3_uri(uri)
        prefix = loc.prefix

        def listing() -> dict[str, int]:
            return {
                obj.object_name[len(prefix) :]: obj.size or 0
                for obj in self._client.list_objects(loc.bucket, prefix=prefix, recursive=True)
                if not obj.is_dir
            }

        try:
            return self._call(f"listing {uri}", listing)
        except StorageNotFoundError:
            return {}

    def write_bytes(self, uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` at ``uri`` with its checksum (one PUT: readers see all of it or nothing)."""
        loc = parse_s3_uri(uri)
        self.ensure_bucket(loc.bucket)
        meta = {CHECKSUM_META_KEY: hashlib.sha256(data).hexdigest()}
        self._call(
            f"uploading {uri}",
            lambda: self._client.put_object(
                loc.bucket, loc.key, io.BytesIO(data), len(data), content_type=content_type, metadata=meta
            ),
        )
        self.counters.add_upload(len(data))

    def read_bytes(self, uri: str) -> bytes:
        """The bytes stored at ``uri``, checked against the recorded checksum when there is one."""
        loc = parse_s3_uri(uri)

        def fetch() -> tuple[bytes, str | None]:
            response = self._client.get_object(loc.bucket, loc.key)
            try:
                return response.read(), response.headers.get(f"x-amz-meta-{CHECKSUM_META_KEY}")
            finally:
                response.close()
                response.release_conn()

        data, expected = self._call(f"downloading {uri}", fetch)
        self.counters.add_download(len(data))
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise StorageIntegrityError(
                f"{uri}: downloaded bytes do not match the stored SHA-256; retry the read"
            )
        return data

    def upload_file(self, local_path: str | Path, uri: str) -> str:
        """Upload one file to ``uri``; returns its SHA-256. The bucket is created when missing."""
        path = Path(local_path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot upload {path}: no such file")
        loc = parse_s3_uri(uri)
        self.ensure_bucket(loc.bucket)
        return self._put_file(path, loc, sha256_of_file(path))

    def _put_file(self, path: Path, loc: S3Uri, digest: str) -> str:
        failed = False

        def put() -> None:
            nonlocal failed
            if failed:  # minio aborts a failed multipart upload itself, unless the server was gone then
                self.abort_unfinished_uploads(str(loc), exact=True)
            try:
                self._client.fput_object(loc.bucket, loc.key, str(path), metadata={CHECKSUM_META_KEY: digest})
            except BaseException:
                failed = True
                raise

        self._call(f"uploading {path} to {loc}", put)
        self.counters.add_upload(path.stat().st_size)
        return digest

    def abort_unfinished_uploads(self, uri: str, exact: bool = False) -> int:
        """Abort the multipart uploads left unfinished under the prefix ``uri`` (or of exactly that key),
        which would otherwise keep their parts' bytes on the server; returns how many were aborted. One
        attempt, no retries: it runs inside a retry, and a server that does not list uploads is skipped."""
        loc = parse_s3_uri(uri)
        try:
            listing = self._client._list_multipart_uploads(loc.bucket, prefix=loc.key, max_uploads=1000)
            uploads = [u for u in listing.uploads if not exact or u.object_name == loc.key]
            for upload in uploads:
                self._client._abort_multipart_upload(loc.bucket, upload.object_name, upload.upload_id)
                logger.info(
                    "aborted an unfinished multipart upload of s3://%s/%s", loc.bucket, upload.object_name
                )
        except (S3Error, urllib3.exceptions.HTTPError, ServerError, InvalidResponseError, OSError) as err:
            logger.info("could not list or abort unfinished uploads under %s (%s)", uri, type(err).__name__)
            return 0
        return len(uploads)

    def download_file(self, uri: str, local_path: str | Path, expected_sha256: str | None = None) -> int:
        """Download ``uri`` to ``local_path`` atomically (temp name, checksum check, rename).

        The checksum is ``expected_sha256`` when given, else the one stored with the object.
        Returns the number of bytes written.

        Raises:
            StorageIntegrityError: the bytes do not match; nothing is left at ``local_path``.
        """
        loc = parse_s3_uri(uri)
        dest = Path(local_path)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def fetch() -> int:
            response = self._client.get_object(loc.bucket, loc.key)
            digest = hashlib.sha256()
            size = 0
            try:
                # A checksum mismatch raised inside the block discards the download.
                with atomic_open(dest, "wb", temp_suffix=".part") as handle:
                    for chunk in response.stream(_HASH_CHUNK):
                        handle.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                    stored = response.headers.get(f"x-amz-meta-{CHECKSUM_META_KEY}")
                    want = expected_sha256 or stored
                    if want and digest.hexdigest() != want:
                        raise StorageIntegrityError(
                            f"{uri}: downloaded bytes (sha256 {digest.hexdigest()[:12]}…) do not match the "
                            f"recorded checksum ({want[:12]}…); the object changed or was corrupted"
                        )
                return size
            finally:
                response.close()
                response.release_conn()

        size = self._call(f"downloading {uri}", fetch)
        self.counters.add_download(size)
        return size

    def delete_prefix(self, uri: str) -> int:
        """Delete every object under the folder ``uri`` (marker first); returns how many were deleted."""
        loc = parse_s3_uri(uri)
        names = sorted(self.list_objects(uri), key=lambda rel: rel != MARKER_NAME)
        for rel in names:
            key = loc.prefix + rel
            self._call(
                f"deleting s3://{loc.bucket}/{key}", lambda k=key: self._client.remove_object(loc.bucket, k)
            )
        return len(names)

    # ---- publish-then-marker folders ----------------------------------------------------------

    def marker_uri(self, uri: str) -> str:
        """URI of the completion marker of the folder ``uri``."""
        return str(parse_s3_uri(uri).join(MARKER_NAME))

    def read_marker(self, uri: str) -> dict:
        """The marker of the folder ``uri``: ``{"files": {rel: {"size", "sha256"}}, ...}``.

        Raises:
            IncompletePublishError: there is no marker.
        """
        try:
            return json.loads(self.read_bytes(self.marker_uri(uri)))
        except StorageNotFoundError:
            raise IncompletePublishError(
                f"{uri} has no {MARKER_NAME} marker: its upload never finished (or is still running). "
                "Re-run the step that publishes it."
            ) from None

    def is_published(self, uri: str) -> bool:
        """True when the folder ``uri`` has a completion marker."""
        return self.exists(self.marker_uri(uri))

    def wait_for_marker(self, uri: str, timeout_s: float = 600.0, poll_s: float = 2.0) -> dict:
        """Block until the folder ``uri`` is published; returns its marker.

        Raises:
            IncompletePublishError: no marker appeared within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.read_marker(uri)
            except IncompletePublishError:
                if time.monotonic() >= deadline:
                    raise IncompletePublishError(
                        f"{uri}: no {MARKER_NAME} marker after waiting {timeout_s:.0f}s"
                    ) from None
                time.sleep(poll_s)

    def _run_parallel(self, jobs: list[Callable[[], int]], desc: str, total_bytes: int) -> int:
        """Run transfer jobs on the pool; stop at the first failure (re-raised). Returns bytes moved."""
        moved = 0
        with (
            tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc, disable=None, leave=False) as bar,
            ThreadPoolExecutor(self.workers, thread_name_prefix="s3") as pool,
        ):
            futures: set[Future[int]] = {pool.submit(job) for job in jobs}
            while futures:
                done, futures = wait(futures, return_when=FIRST_EXCEPTION)
                for fut in done:
                    if fut.exception() is not None:
                        for other in futures:
                            other.cancel()
                        raise fut.exception()
                    moved += fut.result()
                    bar.update(fut.result())
        return moved

    def _upload_target(self, local_dir: str | Path, uri: str) -> tuple[Path, S3Uri]:
        """The local folder and the parsed destination of a folder upload, its bucket created.

        Raises:
            FileNotFoundError: ``local_dir`` is not a folder.
        """
        root = Path(local_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"cannot upload {root}: not a folder")
        loc = parse_s3_uri(uri)
        self.ensure_bucket(loc.bucket)
        return root, loc

    def upload_folder(self, local_dir: str | Path, uri: str, exclude: Collection[str] = ()) -> TransferResult:
        """Publish ``local_dir`` under the folder ``uri``: unpublish, upload in parallel, write marker.

        Files already stored with the same checksum are not sent again, so a failed upload resumes.
        ``exclude``: paths relative to ``local_dir`` (files or whole folders, e.g. a tool's state folder)
        that are neither uploaded nor listed in the marker.
        Raises the first transfer error; the prefix then stays unpublished (no marker).
        """
        start = time.perf_counter()
        root, loc = self._upload_target(local_dir, uri)
        marker_key = loc.join(MARKER_NAME)
        self._call(f"removing {marker_key}", lambda: self._client.remove_object(loc.bucket, marker_key.key))
        remote_sizes = self.list_objects(uri)

        files = list(_iter_local_files(root, exclude))
        listing: dict[str, dict] = {}
        skipped = 0

        def upload_one(rel: str, path: Path, digest: str) -> int:
            self._put_file(path, loc.join(rel), digest)
            return path.stat().st_size

        jobs: list[Callable[[], int]] = []
        total = 0
        for rel, path in files:
            size = path.stat().st_size
            digest = sha256_of_file(path)
            listing[rel] = {"size": size, "sha256": digest}
            if remote_sizes.get(rel) == size and self._stored_checksum(loc.join(rel)) == digest:
                skipped += 1
                continue
            total += size
            jobs.append(lambda r=rel, p=path, d=digest: upload_one(r, p, d))
        moved = self._run_parallel(jobs, f"upload {uri}", total)
        marker = {
            "files": listing,
            "num_files": len(listing),
            "total_bytes": sum(v["size"] for v in listing.values()),
        }
        self.write_bytes(
            str(marker_key), json.dumps(marker, indent=1, sort_keys=True).encode(), "application/json"
        )
        result = TransferResult(uri, root, len(jobs), skipped, moved, time.perf_counter() - start)
        logger.info(
            "published %s: %d files sent, %d unchanged, %.1f MB", uri, len(jobs), skipped, moved / 1e6
        )
        return result

    def upload_files(self, local_dir: str | Path, uri: str) -> dict[str, dict]:
        """Upload every file under ``local_dir`` below the folder ``uri`` without publishing it: no marker
        is removed or written, so several writers (inference shards) can fill disjoint parts of one
        folder. Returns the listing ``{rel: {"size", "sha256"}}`` that :meth:`publish_listing` takes."""
        root, loc = self._upload_target(local_dir, uri)
        listing: dict[str, dict] = {}
        jobs: list[Callable[[], int]] = []
        total = 0

        def upload_one(rel: str, path: Path, digest: str) -> int:
            self._put_file(path, loc.join(rel), digest)
            return path.stat().st_size

        for rel, path in _iter_local_files(root):
            size, digest = path.stat().st_size, sha256_of_file(path)
            listing[rel] = {"size": size, "sha256": digest}
            total += size
            jobs.append(lambda r=rel, p=path, d=digest: upload_one(r, p, d))
        self._run_parallel(jobs, f"upload {uri}", total)
        return listing

    def publish_listing(self, uri: str, listing: dict[str, dict]) -> None:
        """Publish the folder ``uri`` whose files were uploaded already (:meth:`upload_files`): check that
        each listed file is stored with its size, then write the marker listing them.

        Raises:
            IncompletePublishError: a listed file is missing or has another size (nothing is published).
        """
        stored = self.list_objects(uri)
        wrong = sorted(rel for rel, info in listing.items() if stored.get(rel) != info["size"])
        if wrong:
            raise IncompletePublishError(
                f"cannot publish {uri}: {len(wrong)} listed file(s) are not stored as listed, e.g. "
                f"{', '.join(wrong[:5])}"
            )
        marker = {
            "files": listing,
            "num_files": len(listing),
            "total_bytes": sum(v["size"] for v in listing.values()),
        }
        self.write_bytes(
            self.marker_uri(uri), json.dumps(marker, indent=1, sort_keys=True).encode(), "application/json"
        )

    def unpublish(self, uri: str) -> None:
        """Remove the marker of the folder ``uri`` (readers then refuse it); no error when there is none."""
        loc = parse_s3_uri(self.marker_uri(uri))
        self._call(f"removing {loc}", lambda: self._client.remove_object(loc.bucket, loc.key))

    def _stored_checksum(self, loc: S3Uri) -> str | None:
        try:
            stat = self._call(f"checking {loc}", lambda: self._client.stat_object(loc.bucket, loc.key))
        except StorageNotFoundError:
            return None
        return (stat.metadata or {}).get(f"x-amz-meta-{CHECKSUM_META_KEY}")

    def sync_to_local(
        self,
        uri: str,
        local_dir: str | Path,
        require_marker: bool = True,
        include: Collection[str] | None = None,
        marker: dict | None = None,
    ) -> TransferResult:
        """Make ``local_dir`` hold the published folder ``uri``: fetch files missing or different.

        Only the files listed in the marker are fetched, each checked against the marker's checksum and
        written atomically; a copy of the marker is written last to ``local_dir/_SUCCESS`` so local
        readers can check completeness the same way. ``require_marker=False`` is for raw inputs put in
        the bucket by other tools: without a marker every object under ``uri`` is fetched (checked
        against its stored checksum when it has one) and no local marker is written.

        ``include``: fetch only these relative files and folders (e.g. ``["manifest.json",
        "Annotations/v1"]``); names that match nothing are skipped, the caller checks what it needs. A
        selective sync writes no local marker (the folder is not the whole published set). ``marker``:
        the folder's marker when the caller has read it already (saves a request).

        Raises:
            IncompletePublishError: ``uri`` has no marker and ``require_marker`` is set (nothing is
                downloaded).
        """
        start = time.perf_counter()
        root = Path(local_dir)
        if marker is None:
            try:
                marker = self.read_marker(uri)
            except IncompletePublishError:
                if require_marker:
                    raise
        if marker is not None:
            wanted = {rel: (info["size"], info["sha256"]) for rel, info in marker["files"].items()}
        else:
            wanted = {rel: (size, None) for rel, size in self.list_objects(uri).items()}
            if not wanted:
                raise StorageNotFoundError(f"{uri}: no objects under this prefix")
        if include is not None:
            selected = _selector(include)
            wanted = {rel: value for rel, value in wanted.items() if selected(rel)}
        loc = parse_s3_uri(uri)
        jobs: list[Callable[[], int]] = []
        total = 0
        skipped = 0
        for rel, (size, digest) in sorted(wanted.items()):
            dest = (root / rel).resolve()
            if not dest.is_relative_to(root.resolve()):
                raise StorageError(f"{uri}: object {rel!r} would land outside the target folder {root}")
            if (
                dest.is_file()
                and dest.stat().st_size == size
                and (digest is None or sha256_of_file(dest) == digest)
            ):
                skipped += 1
                continue
            total += size
            jobs.append(lambda r=rel, d=dest, s=digest: self.download_file(str(loc.join(r)), d, s))
        if jobs and root.joinpath(MARKER_NAME).exists():
            root.joinpath(MARKER_NAME).unlink()
        moved = self._run_parallel(jobs, f"download {uri}", total)
        if marker is not None and include is None:
            atomic_write_bytes(
                root / MARKER_NAME, json.dumps(marker, indent=1, sort_keys=True).encode(), temp_suffix=".part"
            )
        logger.info(
            "synced %s%s to %s: %d files fetched (%.1f MB), %d unchanged",
            uri,
            "" if include is None else f" ({len(wanted)} selected files)",
            root,
            len(jobs),
            moved / 1e6,
            skipped,
        )
        return TransferResult(uri, root, len(jobs), skipped, moved, time.perf_counter() - start)

    def download_folder(self, uri: str, local_dir: str | Path) -> TransferResult:
        """Download the published folder ``uri`` into ``local_dir`` (same as :meth:`sync_to_local`)."""
        return self.sync_to_local(uri, local_dir, require_marker=True)

    # ---- replace-in-place folders (no moment without a complete set) ----------------------------

    def _marker_or_none(self, uri: str) -> dict | None:
        try:
            return self.read_marker(uri)
        except IncompletePublishError:
            return None

    def replace_folder(self, local_dir: str | Path, uri: str) -> TransferResult:
        """Publish ``local_dir`` as the new content of the folder ``uri`` so that a reader always finds a
        whole set, the previous one or the new one, however the writer dies (SIGKILL, OOM, node loss).

        1. An earlier replacement left unfinished (a marked ``<uri>.incoming``) is finished first, so the
           newest complete set is never dropped for an older one.
        2. The files that differ from the folder's marker are uploaded under ``<uri>.incoming/`` (each
           object carries its SHA-256; a single PUT is atomic), then that prefix's marker is written,
           listing the whole set and which files stay where they are (``kept``).
        3. Only then is the folder's marker removed, the changed files copied into it server-side, its
           new marker written, and the ``.incoming`` prefix deleted.

        Readers use :meth:`complete_versions`: while step 3 runs, the ``.incoming`` set is complete.
        Objects under ``uri`` that the new set does not list stay (as with :meth:`upload_folder`).
        """
        start = time.perf_counter()
        root, loc = self._upload_target(local_dir, uri)
        incoming = incoming_uri(uri)
        current = self._marker_or_none(uri)
        pending = self._marker_or_none(incoming)
        if pending is not None:
            if current is not None and current["files"] == pending["files"]:
                self.delete_prefix(incoming)  # a replacement killed after it had finished the move
            else:
                logger.warning(
                    "%s holds a complete set a replacement of %s did not finish moving in: finishing it first",
                    incoming,
                    uri,
                )
                self._move_in(incoming, uri, pending)
                current = pending
        self.unpublish(incoming)  # an interrupted upload's leftovers are not a set any more
        self.abort_unfinished_uploads(incoming + "/")  # and its unfinished multipart uploads are dropped

        files = list(_iter_local_files(root))
        listing: dict[str, dict] = {}
        kept: list[str] = []
        jobs: list[Callable[[], int]] = []
        total = 0
        leftovers = self.list_objects(incoming)
        inc = parse_s3_uri(incoming)

        def upload_one(path: Path, dest: S3Uri, digest: str) -> int:
            self._put_file(path, dest, digest)
            return path.stat().st_size

        for rel, path in files:
            size, digest = path.stat().st_size, sha256_of_file(path)
            listing[rel] = {"size": size, "sha256": digest}
            if current is not None and current["files"].get(rel) == listing[rel]:
                kept.append(rel)  # the folder holds these bytes already (its marker says so)
            elif leftovers.get(rel) == size and self._stored_checksum(inc.join(rel)) == digest:
                leftovers.pop(rel)  # uploaded by an interrupted attempt: not sent again
            else:
                leftovers.pop(rel, None)
                total += size
                jobs.append(lambda p=path, d=inc.join(rel), h=digest: upload_one(p, d, h))
        for rel in sorted(leftovers):  # stale objects of an interrupted attempt
            key = inc.prefix + rel
            self._call(
                f"deleting s3://{inc.bucket}/{key}", lambda k=key: self._client.remove_object(inc.bucket, k)
            )
        moved = self._run_parallel(jobs, f"upload {incoming}", total)
        marker = {
            "files": listing,
            "num_files": len(listing),
            "total_bytes": sum(v["size"] for v in listing.values()),
            "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "kept": sorted(kept),
            "replaces": uri,
        }
        self.write_bytes(
            self.marker_uri(incoming),
            json.dumps(marker, indent=1, sort_keys=True).encode(),
            "application/json",
        )
        self._move_in(incoming, uri, marker)
        seconds = time.perf_counter() - start
        logger.info(
            "replaced %s: %d files sent, %d unchanged, %.1f MB in %.1f s",
            uri,
            len(jobs),
            len(kept),
            moved / 1e6,
            seconds,
        )
        return TransferResult(uri, root, len(jobs), len(kept), moved, seconds)

    def _move_in(self, incoming: str, uri: str, marker: dict) -> None:
        """Step 3 of :meth:`replace_folder`: unmark ``uri``, copy the ``incoming`` set's changed files into
        it (server-side, checksum kept), check them, mark ``uri``, delete ``incoming``."""
        loc, inc = parse_s3_uri(uri), parse_s3_uri(incoming)
        kept = set(marker.get("kept", ()))
        self.unpublish(uri)
        for rel, info in sorted(marker["files"].items()):
            if rel in kept:
                continue
            src, dest = inc.join(rel), loc.join(rel)
            self._call(
                f"copying {src} to {dest}",
                lambda s=src, d=dest, h=info["sha256"]: self._client.copy_object(
                    d.bucket,
                    d.key,
                    CopySource(s.bucket, s.key),
                    metadata={CHECKSUM_META_KEY: h},
                    metadata_directive=REPLACE,
                ),
            )
        stored = self.list_objects(uri)
        for rel, info in sorted(marker["files"].items()):
            if stored.get(rel) != info["size"] or (
                rel not in kept and self._stored_checksum(loc.join(rel)) != info["sha256"]
            ):
                raise StorageIntegrityError(
                    f"{loc.join(rel)} is not stored as {incoming}'s marker lists it after the move "
                    f"(size or SHA-256 differ); {uri} stays unmarked and {incoming} keeps its marker"
                )
        final = {k: marker[k] for k in ("files", "num_files", "total_bytes", "published_at") if k in marker}
        self.write_bytes(
            self.marker_uri(uri), json.dumps(final, indent=1, sort_keys=True).encode(), "application/json"
        )
        self.delete_prefix(incoming)

    def complete_versions(self, uri: str) -> list[FolderVersion]:
        """The complete sets of the folder ``uri`` (written by :meth:`replace_folder`), newest first.

        ``<uri>.incoming`` when marked (a replacement was being moved in: it is newer; files it kept are
        read from ``uri``), then ``uri`` itself when marked. Empty when neither is marked, also when
        ``uri`` holds objects without a marker: those were never checked as a set and are not offered.
        """
        incoming = incoming_uri(uri)
        loc, inc = parse_s3_uri(uri), parse_s3_uri(incoming)
        current = self._marker_or_none(uri)
        pending = self._marker_or_none(incoming)
        versions: list[FolderVersion] = []
        if pending is not None:
            kept = set(pending.get("kept", ()))
            if current is None:
                why = (
                    f"the newest complete set: it was uploaded whole, then the writer stopped while moving it "
                    f"into {uri}, which has no {MARKER_NAME} marker"
                )
            else:
                why = f"the newest complete set: the writer stopped before it replaced the one in {uri}"
            versions.append(
                FolderVersion(
                    incoming,
                    pending,
                    {rel: str((loc if rel in kept else inc).join(rel)) for rel in pending["files"]},
                    why,
                )
            )
        if current is not None:
            why = "the complete set published there" if pending is None else "the previous complete set"
            versions.append(
                FolderVersion(uri, current, {rel: str(loc.join(rel)) for rel in current["files"]}, why)
            )
        return versions

    def fetch_version(self, version: FolderVersion, local_dir: str | Path) -> TransferResult:
        """Download ``version`` into ``local_dir``: every file checked against its marker's SHA-256 and
        written atomically, then a copy of the marker (``_SUCCESS``) written last.

        Raises:
            StorageIntegrityError: a file does not match the marker (files already written stay, each
                whole; the local marker is not written).
            StorageNotFoundError: a listed object is gone.
        """
        start = time.perf_counter()
        root = Path(local_dir)
        root.mkdir(parents=True, exist_ok=True)
        root.joinpath(MARKER_NAME).unlink(missing_ok=True)
        jobs: list[Callable[[], int]] = []
        total = 0
        for rel, info in sorted(version.marker["files"].items()):
            dest = (root / rel).resolve()
            if not dest.is_relative_to(root.resolve()):
                raise StorageError(
                    f"{version.uri}: object {rel!r} would land outside the target folder {root}"
                )
            total += info["size"]
            jobs.append(lambda s=version.sources[rel], d=dest, h=info["sha256"]: self.download_file(s, d, h))
        moved = self._run_parallel(jobs, f"download {version.uri}", total)
        atomic_write_bytes(
            root / MARKER_NAME,
            json.dumps(version.marker, indent=1, sort_keys=True).encode(),
            temp_suffix=".part",
        )
        return TransferResult(version.uri, root, len(jobs), 0, moved, time.perf_counter() - start)


# ---- module-level shortcuts on a store built from the environment ------------------------------


def upload_folder(local_dir: str | Path, uri: str, workers: int = 8) -> TransferResult:
    """Publish a local folder to ``uri`` with credentials from the environment (see module docstring)."""
    return ObjectStore(workers=workers).upload_folder(local_dir, uri)


def sync_to_local(uri: str, local_dir: str | Path, workers: int = 8) -> TransferResult:
    """Fetch the published folder ``uri`` into ``local_dir`` with credentials from the environment."""
    return ObjectStore(workers=workers).sync_to_local(uri, local_dir)


def is_local_marker_present(local_dir: str | Path) -> bool:
    """True when a local folder holds a ``_SUCCESS`` marker (it was fully synced or published)."""
    return Path(local_dir, MARKER_NAME).is_file()
