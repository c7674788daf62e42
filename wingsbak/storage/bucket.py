"""The node's own bucket (``system.backups.s3``), reached with the node's credentials: what
the ``s3`` store (:mod:`wingsbak.storage.s3`) and the checks of stored backups use.

The archive engine writes straight into :class:`S3PartSink`: each filled part is uploaded by a
small thread pool while the next one is being compressed, so no archive ever touches the
node's disk and memory stays about ``(concurrency + 2) x part_size`` (parts grow past the
first 1,000, see :data:`PARTS_PER_STEP`, so that big archives fit). A part is retried with
the very bytes it was first sent with; any failure aborts the multipart upload, so no orphaned
parts stay in the bucket: an abort S3 does not take is kept and tried again
(:mod:`wingsbak.storage.s3_cleanup`).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from wingsbak.archive.archiver import ArchiveResult, write_archive
from wingsbak.archive.codecs import GZIP, archive_name, download_filename
from wingsbak.archive.rules import IgnoreRules
from wingsbak.config import SECRET, Config, ConfigError, build_settings
from wingsbak.formats import CHECKSUM_TYPES
from wingsbak.log import get_logger
from wingsbak.storage.base import (
    StoreError,
)
from wingsbak.storage.s3_cleanup import STATE_NAME, S3Cleanup
from wingsbak.uuids import UUID_PATTERN

log = get_logger(__name__)

MIN_S3_PART_SIZE = 5 * 1024 * 1024
MAX_S3_PART_SIZE = 5 * 1024 * 1024 * 1024
PAYLOAD_SIGNING = ("auto", "always", "never")


@dataclass(slots=True)
class S3Config:
    """``system.backups.s3``: the node's own bucket (the ``s3`` store, and where its earlier
    backups are found)."""

    key: ClassVar[str] = "s3"

    bucket: str = ""
    region: str = "us-east-1"
    endpoint: str = ""
    access_key_id: str = field(default="", metadata=SECRET)
    secret_access_key: str = field(default="", metadata=SECRET)
    path_style: bool = False
    part_size: int = MIN_S3_PART_SIZE
    concurrency: int = 4
    storage_class: str = ""
    prefix: str = ""
    # SHA-256 of each part in its SigV4 signature: "auto" signs over plain http only (https
    # already protects the bytes in transit, as the AWS SDKs reason), "always" or "never".
    payload_signing: str = "auto"

    @classmethod
    def parse(cls, raw: Any) -> S3Config:
        """The block as read, checked (:class:`ConfigError` naming the key)."""
        cfg = build_settings(cls, raw, f"system.backups.{cls.key}")
        if cfg.part_size < MIN_S3_PART_SIZE:
            raise ConfigError(
                f"system.backups.s3.part_size: {cfg.part_size} is below S3's minimum of "
                f"{MIN_S3_PART_SIZE} bytes"
            )
        if cfg.part_size > MAX_S3_PART_SIZE:
            raise ConfigError(
                f"system.backups.s3.part_size: {cfg.part_size} is above S3's maximum of "
                f"{MAX_S3_PART_SIZE} bytes"
            )
        if cfg.concurrency < 1:
            raise ConfigError("system.backups.s3.concurrency: must be at least 1")
        if cfg.prefix.startswith("/"):
            raise ConfigError(
                f"system.backups.s3.prefix: {cfg.prefix!r} must not start with '/' "
                "(a backup's key is <prefix><server>/<archive name>)"
            )
        endpoint = cfg.endpoint.strip()
        if endpoint and (
            any(c.isspace() for c in endpoint)
            or ("://" in endpoint and urlsplit(endpoint).scheme.lower() not in ("http", "https"))
        ):
            raise ConfigError(
                f"system.backups.s3.endpoint: {cfg.endpoint!r} is not an http(s) URL or a "
                "host[:port] (which means https)"
            )
        if cfg.payload_signing not in PAYLOAD_SIGNING:
            raise ConfigError(
                f"system.backups.s3.payload_signing: {cfg.payload_signing!r} is not one of "
                + ", ".join(PAYLOAD_SIGNING)
            )
        return cfg

    @classmethod
    def of(cls, config: Config) -> S3Config:
        return config.system.backups.settings_of(cls.key, cls.parse)

    @classmethod
    def enabled(cls, config: Config) -> bool:
        """Whether the node has a bucket of its own."""
        return bool(cls.of(config).bucket)

CONTENT_TYPE = GZIP.content_type
PART_ATTEMPTS = 5
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 8.0
DOWNLOAD_URL_TTL = 900
MAX_PARTS = 10_000  # S3's limit per multipart upload
# Parts grow by one part_size every this many parts (S3 allows parts of different sizes):
# 5 MiB parts reach 268 GiB in 10,000 parts instead of 48.8 GiB, and memory grows only for
# archives that big (at most 10 x part_size per buffer).
PARTS_PER_STEP = 1_000

_UUID = re.compile(rf"^{UUID_PATTERN}$")
_RETRY_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling"}
)
# What stores answer to an UNSIGNED-PAYLOAD request they do not accept.
_UNSIGNED_REFUSED = frozenset({"InvalidDigest", "XAmzContentSHA256Mismatch", "NotImplemented"})
T = TypeVar("T")


class S3Error(StoreError):
    """An S3 operation that failed for good, with one line a node operator can act on.

    ``code`` is S3's error code (``NoSuchBucket``, ``InvalidAccessKeyId``...) or a short
    name of our own (``ConnectionError``, ``NoCredentials``, ``Aborted``)."""

    kind = "s3"
    answer = "The node's S3 storage failed or could not be reached."


class S3NotFound(S3Error):
    """The backup's object is not in the bucket."""


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _http_status(exc: BaseException) -> int:
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def is_retryable(exc: BaseException) -> bool:
    """5xx, throttling and connection-level errors: the same request may well succeed later."""
    if isinstance(exc, ClientError):
        status = _http_status(exc)
        return status >= 500 or status == 429 or _error_code(exc) in _RETRY_CODES
    return isinstance(exc, BotoConnectionError | HTTPClientError)


def describe(exc: BaseException, bucket: str, action: str) -> S3Error:
    """One line for the log and the failure report; never a credential."""
    if isinstance(exc, S3Error):
        return exc
    code = _error_code(exc)
    if code == "InvalidAccessKeyId":
        msg = "S3 does not know the access key id (system.backups.s3.access_key_id)"
    elif code == "SignatureDoesNotMatch":
        msg = "S3 refused the secret access key (system.backups.s3.secret_access_key)"
    elif code == "NoSuchBucket":
        msg = f"S3 bucket {bucket!r} does not exist"
    elif code in _UNSIGNED_REFUSED:
        text = exc.response.get("Error", {}).get("Message") or code  # type: ignore[attr-defined]
        msg = (
            f"S3 {action} failed: {code}: {text} (if the store refuses unsigned payloads, "
            "set system.backups.s3.payload_signing: always)"
        )
    elif code in ("AccessDenied", "AllAccessDisabled"):
        msg = f"S3 denied access to bucket {bucket!r} ({action})"
    elif code in ("NoSuchKey", "404", "NotFound"):
        return S3NotFound(f"S3 has no such backup object ({action})", "NoSuchKey")
    elif isinstance(exc, ClientError):
        text = exc.response.get("Error", {}).get("Message") or "no message"
        msg = f"S3 {action} failed: {code or _http_status(exc)}: {text}"
    elif isinstance(exc, NoCredentialsError | PartialCredentialsError):
        code = "NoCredentials"
        msg = "no S3 credentials: set system.backups.s3.access_key_id and secret_access_key"
    elif isinstance(exc, EndpointConnectionError):
        code = "ConnectionError"
        msg = f"cannot connect to the S3 endpoint ({action}): {exc}"
    elif isinstance(exc, BotoConnectionError | HTTPClientError):
        code = "ConnectionError"
        msg = f"S3 connection failed ({action}): {exc}"
    else:
        code = code or type(exc).__name__
        msg = f"S3 {action} failed: {exc}"
    return S3Error(" ".join(msg.split()), code)


def endpoint_url(cfg: S3Config) -> str | None:
    """The endpoint as a URL (https when no scheme is given), or None for AWS itself.

    It is the client's only source: endpoints from ``AWS_ENDPOINT_URL*`` or ``~/.aws/config``
    are ignored (see :func:`make_client`), so this also says how the parts travel."""
    endpoint = cfg.endpoint.strip()
    if not endpoint:
        return None
    if "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    return endpoint


def signs_payload(cfg: S3Config) -> bool:
    """Whether each part's SHA-256 goes into its request signature, for the store to verify.

    "auto" signs over plain http, where the signature is the only integrity check a part gets.
    Over https, TLS already guarantees that the bytes reach the endpoint intact, so "auto"
    sends ``UNSIGNED-PAYLOAD`` (as the panel's pre-signed URLs do) and saves hashing every part,
    about 0.7 s of CPU per GB on cores the compressor needs. With a TLS-terminating proxy in
    front of the store, or a store that refuses unsigned payloads, set "always"."""
    if cfg.payload_signing == "always":
        return True
    if cfg.payload_signing == "never":
        return False
    endpoint = endpoint_url(cfg)
    return endpoint is not None and urlsplit(endpoint).scheme.lower() == "http"


def make_client(cfg: S3Config) -> Any:
    """A boto3 S3 client for ``cfg``. Retries are ours (:func:`call_with_retries`), so that a
    part is never retried twice over by two layers."""
    endpoint = endpoint_url(cfg)
    boto_cfg = BotoConfig(
        region_name=cfg.region or None,
        signature_version="s3v4",
        connect_timeout=10,
        read_timeout=120,
        retries={"total_max_attempts": 1},
        max_pool_connections=max(10, cfg.concurrency + 4),
        tcp_keepalive=True,
        ignore_configured_endpoint_urls=True,  # system.backups.s3.endpoint is the only one
        s3={
            "addressing_style": "path" if cfg.path_style else "auto",
            "payload_signing_enabled": signs_payload(cfg),
        },
        # The CRC headers boto3 adds by default since 1.36 are refused by several
        # S3-compatible stores (older MinIO, Backblaze, Wasabi...): only send them when needed.
        # payload_signing relies on this: "when_supported" would send parts with a CRC trailer
        # as STREAMING-UNSIGNED-PAYLOAD-TRAILER, unsigned whatever the setting says.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=cfg.access_key_id or None,
        aws_secret_access_key=cfg.secret_access_key or None,
        config=boto_cfg,
    )


def call_with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    attempts: int = PART_ATTEMPTS,
    backoff: float = BACKOFF_INITIAL,
    stop: threading.Event | None = None,
) -> T:
    """``fn()``, again after an exponential, jittered pause while it fails retryably."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not is_retryable(exc):
                raise
            delay = min(BACKOFF_MAX, backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.warning(
                "s3_retry",
                request=what,
                attempt=attempt,
                error=_error_code(exc) or type(exc).__name__,
                delay=round(delay, 2),
            )
            if stop is not None:
                if stop.wait(delay):
                    raise
            else:
                time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def check_uuid(value: str, what: str) -> str:
    # Identifiers become object key components: nothing but a canonical UUID may get there.
    if not _UUID.match(value):
        raise ValueError(f"{what} is not a canonical lower-case UUID")
    return value


class S3PartSink:
    """A writable that uploads what it is given as one S3 multipart upload.

    The upload is created by the constructor (so bad credentials or a missing bucket fail
    before anything is compressed). ``write`` fills ``part_size`` buffers and hands each full
    one to a pool of ``concurrency`` uploader threads, blocking while all of them are busy.
    ``complete()`` sends the last part and completes the upload; ``abort()`` (also what
    leaving a ``with`` block without ``complete()`` does) aborts it. Every failure is raised as
    :class:`S3Error` after the upload has been aborted.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        *,
        part_size: int = MIN_S3_PART_SIZE,
        concurrency: int = 4,
        storage_class: str = "",
        content_type: str = CONTENT_TYPE,
        attempts: int = PART_ATTEMPTS,
        backoff: float = BACKOFF_INITIAL,
        parts_per_step: int = PARTS_PER_STEP,
        on_abort_failed: Callable[[str, str], None] | None = None,
    ) -> None:
        if part_size < MIN_S3_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_S3_PART_SIZE} bytes")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client
        self.bucket = bucket
        self.key = key
        self.part_size = part_size
        self.parts_per_step = parts_per_step
        self.concurrency = concurrency
        self.attempts = attempts
        self.backoff = backoff
        self.on_abort_failed = on_abort_failed  # (key, upload id): an abort S3 did not take
        self.size = 0
        self.parts_in_flight_peak = 0
        self._buf = bytearray(part_size)
        # Part buffers whose upload has finished, for reuse: a fresh 5 MiB buffer per part
        # costs a page fault per 4 KiB (a third of the upload's CPU, measured with py-spy).
        self._spare: list[bytearray] = []
        self._fill = 0
        self._next_part = 1
        self._futures: list[Future[tuple[int, str]]] = []
        self._slots = threading.BoundedSemaphore(concurrency)
        self._in_flight = 0
        self._lock = threading.Lock()
        self._error: S3Error | None = None
        self._stop = threading.Event()
        self._done = False
        extra: dict[str, str] = {"ContentType": content_type}
        if storage_class:
            extra["StorageClass"] = storage_class
        tries = 0

        def create() -> Any:
            nonlocal tries
            tries += 1
            return client.create_multipart_upload(Bucket=bucket, Key=key, **extra)

        try:
            created = call_with_retries(
                create, what="CreateMultipartUpload", attempts=attempts, backoff=backoff
            )
        except Exception as exc:
            raise describe(exc, bucket, "starting the upload") from exc
        self.upload_id: str = created["UploadId"]
        if tries > 1:
            # A try whose answer was lost may have created an upload all the same.
            self._abort_other_uploads()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="wingsbak-s3")

    def _abort_other_uploads(self) -> None:
        try:
            listing = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.key)
            for upload in listing.get("Uploads", []):
                if upload.get("Key") == self.key and upload["UploadId"] != self.upload_id:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=self.key, UploadId=upload["UploadId"]
                    )
                    log.info("s3_duplicate_upload_aborted", key=self.key)
        except Exception as exc:  # the backup goes on; the sweep at the next start cleans up
            log.warning("s3_duplicate_upload_not_aborted", key=self.key, error=str(exc))

    def size_of_part(self, number: int) -> int:
        """The size of part ``number`` (all but the last are exactly this long)."""
        return self.part_size * (1 + (number - 1) // self.parts_per_step)

    # -- writing ----------------------------------------------------------------------------

    def write(self, data: bytes | memoryview, /) -> int:
        if self._done:
            raise ValueError("write to a finished S3 upload")
        self._raise_if_failed()
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            size = len(self._buf)
            take = min(size - self._fill, len(view))
            self._buf[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == size:
                full, self._fill = self._buf, 0
                # The full buffer goes to the uploader as is and is written again only once
                # its part is done, so a retry re-sends exactly the bytes of the first attempt.
                self._submit(full)
                with self._lock:
                    spare = self._spare.pop() if self._spare else None
                size = self.size_of_part(self._next_part)
                if spare is None or len(spare) != size:
                    spare = bytearray(size)
                self._buf = spare
        self.size += total
        return total

    def flush(self) -> None:
        """Nothing to do: a part is sent when it is full, not when the writer flushes."""

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _submit(self, body: bytes | bytearray) -> None:
        self._slots.acquire()  # the memory bound: blocks while `concurrency` parts are in flight
        if self._error is not None:
            self._slots.release()
            raise self._error
        number = self._next_part
        if number > MAX_PARTS:
            self._slots.release()
            self._fail(S3Error(f"the archive needs more than {MAX_PARTS} parts", "TooManyParts"))
            raise self._error  # type: ignore[misc]
        self._next_part += 1
        with self._lock:
            self._in_flight += 1
            self.parts_in_flight_peak = max(self.parts_in_flight_peak, self._in_flight)
        future = self._pool.submit(self._upload_part, number, body)
        future.add_done_callback(lambda f, b=body: self._part_done(f, b))
        self._futures.append(future)

    def _part_done(self, _future: Future[tuple[int, str]], body: bytes | bytearray) -> None:
        with self._lock:
            self._in_flight -= 1
            if isinstance(body, bytearray) and len(body) == self.size_of_part(self._next_part):
                self._spare.append(body)
        self._slots.release()

    def _upload_part(self, number: int, body: bytes | bytearray) -> tuple[int, str]:
        if self._stop.is_set():
            raise S3Error("upload aborted", "Aborted")
        try:
            answer = call_with_retries(
                lambda: self.client.upload_part(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    PartNumber=number,
                    Body=body,
                    ContentLength=len(body),
                ),
                what=f"UploadPart {number}",
                attempts=self.attempts,
                backoff=self.backoff,
                stop=self._stop,
            )
        except Exception as exc:
            error = describe(exc, self.bucket, f"uploading part {number}")
            self._fail(error)
            raise error from exc
        return number, str(answer["ETag"])

    def _fail(self, error: S3Error) -> None:
        with self._lock:
            if self._error is None:
                self._error = error
        self._stop.set()  # the other parts need not be retried: the upload is lost anyway

    # -- finishing --------------------------------------------------------------------------

    def complete(self) -> str:
        """Upload the last part and complete the upload; returns the object's ETag.

        On failure the upload is aborted and :class:`S3Error` raised."""
        if self._done:
            raise ValueError("the S3 upload is already finished")
        try:
            self._raise_if_failed()
            if self._fill or self._next_part == 1:  # S3 wants at least one part, even empty
                last = bytes(memoryview(self._buf)[: self._fill])
                self._buf = bytearray()
                self._submit(last)
            wait_futures(self._futures)
            self._raise_if_failed()
            parts = sorted(f.result() for f in self._futures)
            etag = self._complete([{"PartNumber": n, "ETag": e} for n, e in parts])
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._pool.shutdown(wait=False)
        log.info("s3_upload_completed", key=self.key, parts=len(parts), size=self.size)
        return etag

    def _complete(self, parts: list[dict[str, Any]]) -> str:
        tried = False

        def once() -> Any:
            nonlocal tried
            try:
                return self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except ClientError as exc:
                # A retry after a lost answer finds the upload already completed.
                if tried and _error_code(exc) == "NoSuchUpload":
                    return self.client.head_object(Bucket=self.bucket, Key=self.key)
                raise
            finally:
                tried = True

        try:
            answer = call_with_retries(
                once, what="CompleteMultipartUpload", attempts=self.attempts, backoff=self.backoff
            )
        except Exception as exc:
            raise describe(exc, self.bucket, "completing the upload") from exc
        return str(answer.get("ETag", ""))

    def abort(self) -> None:
        """Abort the upload, after the parts in flight have finished; never raises."""
        if self._done:
            return
        self._done = True
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._buf = bytearray()
        try:
            call_with_retries(
                lambda: self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
                ),
                what="AbortMultipartUpload",
                attempts=self.attempts,
                backoff=self.backoff,
            )
        except Exception as exc:
            if _error_code(exc) == "NoSuchUpload":
                return
            # Parts stay billed until a later abort removes them: kept, and tried again.
            log.error(
                "s3_abort_failed",
                key=self.key,
                upload_id=self.upload_id,
                error=str(describe(exc, self.bucket, "aborting the upload")),
            )
            if self.on_abort_failed is not None:
                self.on_abort_failed(self.key, self.upload_id)
            return
        log.info("s3_upload_aborted", key=self.key, parts_sent=self._next_part - 1)

    def __enter__(self) -> S3PartSink:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._done:
            self.abort()


class NodeBucket:
    """The bucket of ``system.backups.s3``: upload, download link, delete, restore stream."""

    def __init__(
        self,
        cfg: S3Config,
        *,
        client: Any = None,
        attempts: int = PART_ATTEMPTS,
        backoff: float = BACKOFF_INITIAL,
        state_dir: Path | None = None,
        servers_dir: Path | None = None,
    ) -> None:
        """``state_dir``: where pending aborts and deletes are kept (none: in memory only);
        ``servers_dir``: the node's server folders, whose unfinished uploads the start-up
        sweep may abort (none: no sweep)."""
        self.cfg = cfg
        self.client = client if client is not None else make_client(cfg)
        self.attempts = attempts
        self.backoff = backoff
        self.state_dir = state_dir
        self.cleanup = S3Cleanup(
            self.client,
            cfg.bucket,
            cfg.prefix,
            state_dir / STATE_NAME if state_dir is not None else None,
            servers_dir,
        )

    @property
    def bucket(self) -> str:
        return self.cfg.bucket

    def key(self, server_uuid: str, backup_uuid: str) -> str:
        """``<prefix><server-uuid>/<archive name>``: the panel's own layout."""
        check_uuid(server_uuid, "server uuid")
        check_uuid(backup_uuid, "backup uuid")
        return f"{self.cfg.prefix}{server_uuid}/{archive_name(backup_uuid)}"

    def checksum_key(self, server_uuid: str, backup_uuid: str, checksum_type: str) -> str:
        """``<key>.sha1``: the checksum the panel was given, beside the object, in the format
        ``sha1sum -c`` reads (a multipart object's ETag is not a checksum of its bytes)."""
        return f"{self.key(server_uuid, backup_uuid)}.{checksum_type}"

    def _put_checksum(self, server_uuid: str, backup_uuid: str, result: ArchiveResult) -> None:
        """Saved after the object; a failure costs only the verification's comparison with
        it (the gzip and tar checks remain), so it does not fail the backup."""
        key = self.checksum_key(server_uuid, backup_uuid, result.checksum_type)
        body = f"{result.checksum}  {archive_name(backup_uuid)}\n".encode()
        try:
            self._call(
                "saving the checksum",
                lambda: self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType="text/plain"
                ),
            )
        except S3Error as exc:
            log.warning("s3_checksum_not_saved", key=key, error=str(exc))

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        try:
            return call_with_retries(fn, what=action, attempts=self.attempts, backoff=self.backoff)
        except Exception as exc:
            raise describe(exc, self.bucket, action) from exc

    def check(self) -> None:
        """Raise :class:`S3Error` unless the bucket is there and these credentials reach it."""
        try:
            self._call("checking the bucket", lambda: self.client.head_bucket(Bucket=self.bucket))
        except S3NotFound as exc:  # HEAD has no body: a bare 404 is all S3 says
            raise S3Error(f"S3 bucket {self.bucket!r} does not exist", "NoSuchBucket") from exc

    def open_sink(self, server_uuid: str, backup_uuid: str) -> S3PartSink:
        return S3PartSink(
            self.client,
            self.bucket,
            self.key(server_uuid, backup_uuid),
            part_size=self.cfg.part_size,
            concurrency=self.cfg.concurrency,
            storage_class=self.cfg.storage_class,
            attempts=self.attempts,
            backoff=self.backoff,
            on_abort_failed=self.cleanup.add_abort,
        )

    def upload_backup(
        self,
        root: str,
        server_uuid: str,
        backup_uuid: str,
        rules: IgnoreRules | None = None,
        *,
        committing: Callable[[ArchiveResult, str], None] | None = None,
        **options: Any,
    ) -> ArchiveResult:
        """Archive ``root`` straight into the bucket (no temporary file), for a worker thread.

        ``options`` are those of :func:`write_archive` (level, checksum, write_limit,
        progress, cancel). ``committing(result, upload_id)`` runs once every part is written,
        before S3 is asked to complete the upload. Raises :class:`S3Error`, :class:`Cancelled`
        or the archive's own error; in every case the multipart upload has been aborted."""
        with (
            self.cleanup.owning(self.key(server_uuid, backup_uuid)),
            self.open_sink(server_uuid, backup_uuid) as sink,
        ):
            result = write_archive(root, sink, rules, **options)
            if result.size != sink.size:  # pragma: no cover - an engine bug, not an S3 one
                raise S3Error(f"archive size {result.size} != uploaded {sink.size}", "SizeMismatch")
            if committing is not None:
                committing(result, sink.upload_id)
            sink.complete()
        self.cleanup.kick()  # S3 answers: what an outage left pending can go now
        self._put_checksum(server_uuid, backup_uuid, result)
        return result

    def presigned_download_url(
        self, server_uuid: str, backup_uuid: str, expires: int = DOWNLOAD_URL_TTL
    ) -> str:
        """A GET URL for the archive, valid ``expires`` seconds (no request is made)."""
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": self.key(server_uuid, backup_uuid),
                    "ResponseContentDisposition": (
                        f'attachment; filename="{download_filename(backup_uuid)}"'
                    ),
                },
                ExpiresIn=expires,
            )
        )

    def size(self, server_uuid: str, backup_uuid: str) -> int | None:
        """The object's size, or None when there is no such backup."""
        key = self.key(server_uuid, backup_uuid)
        try:
            head = self._call(
                "looking up the backup",
                lambda: self.client.head_object(Bucket=self.bucket, Key=key),
            )
        except S3NotFound:
            return None
        # A HEAD answered without a length (some gateways) still says the object is there.
        return int(head.get("ContentLength") or 0)

    def exists(self, server_uuid: str, backup_uuid: str) -> bool:
        return self.size(server_uuid, backup_uuid) is not None

    def delete(self, server_uuid: str, backup_uuid: str) -> bool:
        """Remove the backup's object; False when there was none."""
        if not self.exists(server_uuid, backup_uuid):
            return False
        key = self.key(server_uuid, backup_uuid)
        self._call(
            "deleting the backup", lambda: self.client.delete_object(Bucket=self.bucket, Key=key)
        )
        for kind in CHECKSUM_TYPES:
            extra = self.checksum_key(server_uuid, backup_uuid, kind)
            try:
                self._call(
                    "deleting the checksum",
                    lambda k=extra: self.client.delete_object(Bucket=self.bucket, Key=k),
                )
            except S3Error as exc:  # a few bytes left behind; the backup itself is gone
                log.warning("s3_checksum_not_deleted", key=extra, error=str(exc))
        return True

    def delete_server(self, server_uuid: str) -> int:
        """Remove every backup object of this server (``<prefix><server>/<archive name>``, with
        its checksum object ``.sha1``/``.sha256``) and abort its unfinished uploads (no start-up
        sweep looks for a deleted server's); other keys under its folder are left. Returns how
        many backups went."""
        check_uuid(server_uuid, "server uuid")
        folder = f"{self.cfg.prefix}{server_uuid}/"
        layout = re.compile(re.escape(folder) + _UUID.pattern.strip("^$") + re.escape(GZIP.suffix))
        sums = re.compile(layout.pattern + r"\.(?:" + "|".join(CHECKSUM_TYPES) + ")")
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(
            "listing the server's backups",
            lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=folder)),
        )
        keys: list[str] = []
        checksums: list[str] = []
        for page in pages:
            for o in page.get("Contents", []):
                key = str(o["Key"])
                if layout.fullmatch(key):
                    keys.append(key)
                elif sums.fullmatch(key):
                    checksums.append(key)
        for key in [*keys, *checksums]:
            self._call(
                "deleting the server's backups",
                lambda k=key: self.client.delete_object(Bucket=self.bucket, Key=k),
            )
        uploads = self._call(
            "listing the server's unfinished uploads",
            lambda: self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=folder),
        )
        for upload in uploads.get("Uploads", []):
            if layout.fullmatch(str(upload.get("Key", ""))):
                self._call(
                    "aborting the server's unfinished uploads",
                    lambda u=upload: self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"]
                    ),
                )
        return len(keys)

    def server_of(self, backup_uuid: str) -> str | None:
        """The server whose folder holds this backup's object."""
        check_uuid(backup_uuid, "backup uuid")
        prefix = self.cfg.prefix
        archive = re.escape(archive_name(backup_uuid))
        name = re.compile(re.escape(prefix) + f"({UUID_PATTERN})/" + archive)
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(
            "looking for the backup",
            lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix)),
        )
        for page in pages:
            for o in page.get("Contents", []):
                if m := name.fullmatch(str(o["Key"])):
                    return m.group(1)
        return None

    def backups_of(self, server_uuid: str) -> list[tuple[str, str, datetime, str]]:
        """The server's backup objects: (backup uuid, key, when uploaded, ETag)."""
        check_uuid(server_uuid, "server uuid")
        folder = f"{self.cfg.prefix}{server_uuid}/"
        name = re.compile(re.escape(folder) + f"({UUID_PATTERN})" + re.escape(GZIP.suffix))
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(
            "listing the server's backups",
            lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=folder)),
        )
        found = []
        for page in pages:
            for o in page.get("Contents", []):
                if m := name.fullmatch(str(o["Key"])):
                    found.append((m.group(1), str(o["Key"]), o["LastModified"], str(o["ETag"])))
        return found

    def open_stream(self, server_uuid: str, backup_uuid: str) -> BinaryIO:
        """The archive's bytes as a readable stream (close it when done), for a restore."""
        key = self.key(server_uuid, backup_uuid)
        answer = self._call(
            "opening the backup", lambda: self.client.get_object(Bucket=self.bucket, Key=key)
        )
        return answer["Body"]  # type: ignore[no-any-return]

    def abort_incomplete(self, server_uuid: str, backup_uuid: str) -> int:
        """Abort any multipart upload of this backup left by a crash; returns how many."""
        key = self.key(server_uuid, backup_uuid)
        listing = self._call(
            "listing unfinished uploads",
            lambda: self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key),
        )
        aborted = 0
        for upload in listing.get("Uploads", []):
            if upload.get("Key") != key:
                continue
            upload_id = upload["UploadId"]
            self._call(
                "aborting an unfinished upload",
                lambda u=upload_id: self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=u
                ),
            )
            aborted += 1
        return aborted
