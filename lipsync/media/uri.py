"""Where media lives: local paths and fsspec URIs (``s3://...``), read and written safely.

Decoders and encoders (PyAV, OpenCV, soundfile) want real files, so remote objects are staged
through temporary files. Outputs are always written under a temporary name and moved or uploaded
into place only when complete, so a crash never leaves a half-written file under the final name.

Storage faults: a remote read or write failing transiently (5xx, throttling, a reset connection) is
retried with backoff (:func:`retrying`) and then raises StorageError naming the URI; a full disk
(ENOSPC) is a StorageError too, with the older file of that name left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import fsspec
from fsspec.core import split_protocol

from lipsync.errors import MediaNotFoundError, StorageError

logger = logging.getLogger("lipsync.media")
T = TypeVar("T")

_LOCAL_PROTOCOLS = {None, "file", "local"}
# The S3 settings of a driver's environment that Ray workers need too: they may run on other
# machines, or in a Ray instance started before these were set.
S3_ENVIRONMENT = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ACCESS_KEY_ID",
                  "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")

UriLike = str | os.PathLike


def is_remote(uri: UriLike) -> bool:
    """True for ``s3://`` and any other fsspec protocol; plain paths and ``file://`` are local."""
    protocol, _ = split_protocol(os.fspath(uri))
    return protocol not in _LOCAL_PROTOCOLS


def local_path(uri: UriLike) -> str:
    """The filesystem path of a local ``uri`` (strips ``file://``)."""
    text = os.fspath(uri)
    protocol, path = split_protocol(text)
    if protocol in ("file", "local"):
        return path
    return text


def suffix_of(uri: UriLike) -> str:
    """The lower-case extension of the last path component, with its dot (``".mp4"``) or ``""``."""
    _, path = split_protocol(os.fspath(uri))
    return Path(path.split("?", 1)[0]).suffix.lower()


def storage_options() -> dict:
    """fsspec/s3fs keyword arguments taken from the standard AWS environment variables.

    s3fs does not reliably honour ``AWS_ENDPOINT_URL``, so the endpoint is passed explicitly;
    credentials are left to botocore's own chain (env vars, profiles, instance roles).
    """
    opts: dict = {}
    client_kwargs: dict = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    return opts


def ray_runtime_env() -> dict:
    """``ray_remote_args`` / ``ray.init`` keywords that forward this process's S3 settings to workers."""
    env = {k: os.environ[k] for k in S3_ENVIRONMENT if os.environ.get(k)}
    return {"runtime_env": {"env_vars": env}} if env else {}


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``uri`` (S3 settings from the environment) and the path within it."""
    protocol, _ = split_protocol(uri)
    options = storage_options() if protocol in ("s3", "s3a") else {}
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return fs, path


def join(base: UriLike, *parts: str) -> str:
    """``base`` / ``parts``: with ``/`` for remote URIs, ``os.path.join`` for local paths."""
    text = os.fspath(base)
    if is_remote(text):
        return "/".join([text.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(text, *parts)


def exists(uri: UriLike) -> bool:
    """True if ``uri`` is an existing file or folder; remote listings are not cached (another
    process may just have written it)."""
    text = os.fspath(uri)
    if not is_remote(text):
        return os.path.exists(local_path(text))
    fs, path = filesystem(text)
    with contextlib.suppress(Exception):
        fs.invalidate_cache(path)
    return fs.exists(path)


def list_files(folder: UriLike) -> list[str]:
    """The files directly in ``folder`` (local or remote), sorted, as paths / URIs.
    MediaNotFoundError if it is not a readable folder."""
    text = os.fspath(folder)
    if not is_remote(text):
        path = local_path(text)
        if not os.path.isdir(path):
            raise MediaNotFoundError(text, "no such folder")
        return sorted(os.path.join(path, n) for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
    fs, path = filesystem(text)
    try:
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, PermissionError, NotADirectoryError) as err:
        raise MediaNotFoundError(text, f"cannot list the folder ({type(err).__name__})") from err
    protocol = split_protocol(text)[0]
    return sorted(f"{protocol}://{e['name']}" for e in entries if e.get("type") == "file")


# -- storage faults ----------------------------------------------------------------------------
# A remote read or write that fails transiently (HTTP 5xx, throttling, a dropped connection) is
# tried this many times in all, waiting LIPSYNC_IO_BACKOFF_S, then twice that, ... (capped at
# _BACKOFF_MAX_S, with jitter) in between. s3fs and botocore already retry each request a few
# times; this covers an outage longer than their few hundred milliseconds, and any other fsspec
# filesystem. The last failure becomes a StorageError naming the URI.
DEFAULT_ATTEMPTS = 4
DEFAULT_BACKOFF_S = 1.0
_BACKOFF_MAX_S = 20.0
_EREMOTEIO = getattr(errno, "EREMOTEIO", errno.EIO)
# What s3fs makes of 5xx answers (InternalError -> EREMOTEIO, SlowDown / ServiceUnavailable ->
# EBUSY, unknown codes -> EIO) and of network trouble.
_TRANSIENT_ERRNOS = {errno.EIO, _EREMOTEIO, errno.EBUSY, errno.EAGAIN, errno.ECONNRESET, errno.ECONNABORTED,
                     errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE, errno.ENETUNREACH, errno.EHOSTUNREACH,
                     errno.ENETDOWN}
_THROTTLING_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                     "TooManyRequestsException", "RequestTimeout", "InternalError", "ServiceUnavailable",
                     "BandwidthLimitExceeded", "RequestThrottled"}
# Untranslated client-library errors (botocore, aiohttp, urllib3) that mean the network failed.
_NETWORK_ERROR_NAMES = {"EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError",
                        "ConnectTimeoutError", "HTTPClientError", "ResponseStreamingError", "IncompleteReadError",
                        "ClientPayloadError", "ServerDisconnectedError", "ClientConnectionError", "ClientOSError",
                        "ProtocolError"}
# A full disk or quota: retrying does not help, and the message says what to free.
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


def is_transient(err: BaseException) -> bool:
    """Whether a storage error may go away when the request is repeated."""
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                        FileExistsError)):
        return False
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in _TRANSIENT_ERRNOS
    response = getattr(err, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        code = (response.get("Error") or {}).get("Code")
        return (isinstance(status, int) and (status >= 500 or status == 429)) or code in _THROTTLING_CODES
    return any(c.__name__ in _NETWORK_ERROR_NAMES for c in type(err).__mro__)


def retrying(uri: str, action: str, operation: Callable[[], T]) -> T:
    """``operation()``, repeated with backoff while it fails transiently (:func:`is_transient`);
    StorageError naming ``uri`` when the last attempt fails too. Other errors pass through."""
    attempts = max(1, int(_env_float("LIPSYNC_IO_ATTEMPTS", DEFAULT_ATTEMPTS)))
    backoff = _env_float("LIPSYNC_IO_BACKOFF_S", DEFAULT_BACKOFF_S)
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except Exception as err:
            if not is_transient(err):
                raise
            if attempt == attempts:
                raise StorageError(uri, f"{action} failed {attempts} times, the storage still answers "
                                        f"{type(err).__name__}: {err}") from err
            delay = min(backoff * 2 ** (attempt - 1), _BACKOFF_MAX_S) * random.uniform(0.5, 1.0)
            logger.warning("%s: %s failed (%s: %s); try %d of %d in %.1f s", uri, action, type(err).__name__,
                           err, attempt + 1, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _full_disk(uri: str, err: OSError) -> StorageError:
    return StorageError(uri, f"cannot write: {os.strerror(err.errno)} ({type(err).__name__}); free some space "
                             "and run again (nothing was written under this name)")


@contextlib.contextmanager
def local_input(uri: UriLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a local path holding the content of ``uri``.

    Local files are yielded as they are. Remote objects are downloaded to a temporary file that
    keeps the extension (decoders guess formats from it) and is deleted on exit.
    """
    text = os.fspath(uri)
    if not is_remote(text):
        path = local_path(text)
        if not os.path.isfile(path):
            problem = "is a directory, not a file" if os.path.isdir(path) else "no such file"
            raise MediaNotFoundError(text, problem)
        yield path
        return

    tmpdir = tempfile.mkdtemp(prefix="lipsync-in-")
    try:
        local = os.path.join(tmpdir, "input" + (suffix if suffix is not None else suffix_of(text)))
        try:
            fs, path = filesystem(text)
            retrying(text, "download", lambda: fs.get_file(path, local))
        except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
            problem = f"cannot read object ({type(err).__name__}: {err})"
            raise MediaNotFoundError(text, problem) from err
        except OSError as err:
            problem = f"cannot download ({type(err).__name__}: {err})"
            raise MediaNotFoundError(text, problem) from err
        yield local
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


_PARTIAL_TAG = 12  # hex digits of the random part of a temporary name


def _stem_suffix(final: str) -> tuple[str, str, str]:
    directory, base = os.path.split(final)
    suffix = Path(base).suffix
    return directory, base[: len(base) - len(suffix)] if suffix else base, suffix


def _temp_name_beside(final: str) -> str:
    """A fresh hidden name in ``final``'s directory that keeps its extension (muxers need it)."""
    directory, stem, suffix = _stem_suffix(final)
    return os.path.join(directory, f".{stem}.{uuid.uuid4().hex[:_PARTIAL_TAG]}.partial{suffix}")


def remove_stale_partials(uri: UriLike) -> None:
    """Delete the temporary files that a killed earlier ``atomic_output(uri)`` left beside a local
    ``uri``, so an interrupted job leaves no debris. Remote outputs never leave any: they are staged
    in a local temporary folder and uploaded in one request."""
    text = os.fspath(uri)
    if is_remote(text):
        return
    directory, stem, suffix = _stem_suffix(os.path.abspath(local_path(text)))
    if not os.path.isdir(directory):
        return
    head, tail = f".{stem}.", f".partial{suffix}"
    for name in os.listdir(directory):
        if name.startswith(head) and name.endswith(tail) and len(name) == len(head) + _PARTIAL_TAG + len(tail):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))


@contextlib.contextmanager
def atomic_output(uri: UriLike) -> Iterator[str]:
    """Yield a temporary local path; on success it becomes ``uri``, on error it vanishes.

    Local outputs are staged in the destination directory so the final ``os.replace`` is atomic
    (same filesystem). Remote outputs are staged in a temp dir and uploaded only after the block
    succeeded, so a failure never creates the object.
    """
    text = os.fspath(uri)
    if is_remote(text):
        tmpdir = tempfile.mkdtemp(prefix="lipsync-out-")
        try:
            tmp = os.path.join(tmpdir, "output" + suffix_of(text))
            try:
                yield tmp
            except OSError as err:
                if err.errno in _FULL_ERRNOS:  # the local staging folder is full
                    raise _full_disk(text, err) from err
                raise
            fs, path = filesystem(text)
            try:
                # One PUT (or a multipart upload completed at the end): the object appears whole
                # or not at all, so repeating it is safe.
                retrying(text, "upload", lambda: fs.put_file(tmp, path))
            except StorageError:
                raise
            except Exception as err:
                raise StorageError(text, f"cannot upload ({type(err).__name__}: {err})") from err
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return

    final = os.path.abspath(local_path(text))
    try:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = _temp_name_beside(final)
        # Created with mode 0o666 so the umask applies as for any ordinary file (mkstemp would
        # leave the result readable by its owner only).
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as err:
        if err.errno in _FULL_ERRNOS:
            raise _full_disk(text, err) from err
        raise StorageError(text, f"cannot create the output ({type(err).__name__}: {err})") from err
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
            raise _full_disk(text, err) from err
        raise


def write_bytes(uri: UriLike, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically (local or remote)."""
    with atomic_output(uri) as tmp, open(tmp, "wb") as f:
        f.write(data)


def read_bytes(uri: UriLike) -> bytes:
    """The whole content of ``uri``; MediaNotFoundError if it does not exist or cannot be read."""
    text = os.fspath(uri)
    try:
        if not is_remote(text):
            with open(local_path(text), "rb") as f:
                return f.read()
        fs, path = filesystem(text)
        return retrying(text, "read", lambda: fs.cat_file(path))
    except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
        raise MediaNotFoundError(text, f"cannot read ({type(err).__name__})") from err
    except OSError as err:
        raise StorageError(text, f"cannot read ({type(err).__name__}: {err})") from err

