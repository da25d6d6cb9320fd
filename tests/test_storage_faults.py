"""Storage faults: a full disk and a failing object store give a retry where it can help, then a
clear StorageError naming the file; no half-written output ever appears under its final name and
an older file of that name survives."""

from __future__ import annotations

import errno
import os

from fsspec.implementations.memory import MemoryFileSystem
import numpy as np
import pytest

from lipsync.errors import MediaNotFoundError, StorageError
from lipsync.media import VideoWriter, atomic_output, local_input, read_bytes, save_wav, write_bytes
from lipsync.media import uri as uri_module
from lipsync.media.uri import is_transient


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setenv("LIPSYNC_IO_BACKOFF_S", "0.001")
    monkeypatch.setenv("LIPSYNC_IO_ATTEMPTS", "4")


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _leftovers(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n != "out.mp4" and n != "out.wav" and n != "out.bin")


# -- a full local disk ---------------------------------------------------------------------------------
def test_enospc_while_writing_keeps_the_old_file(tmp_path):
    final = tmp_path / "out.bin"
    final.write_bytes(b"old and complete")
    with pytest.raises(StorageError) as err:
        with atomic_output(str(final)) as tmp, open(tmp, "wb") as f:
            f.write(b"half of the new")
            _enospc()
    assert str(err.value).startswith(f"{final}: cannot write: No space left on device")
    assert err.value.path == str(final)
    assert final.read_bytes() == b"old and complete"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("writer", ["write_bytes", "save_wav", "VideoWriter"])
def test_enospc_at_the_final_rename(tmp_path, monkeypatch, writer, media_kit):
    """The last step (the rename into place) failing leaves the old file and no temporary file."""
    suffix = {"write_bytes": ".bin", "save_wav": ".wav", "VideoWriter": ".mp4"}[writer]
    final = tmp_path / f"out{suffix}"
    final.write_bytes(b"old")
    monkeypatch.setattr(uri_module.os, "replace", _enospc)
    with pytest.raises(StorageError, match="No space left on device"):
        if writer == "write_bytes":
            write_bytes(str(final), b"new" * 1000)
        elif writer == "save_wav":
            save_wav(str(final), media_kit.sine(0.2, 16000), 16000)
        else:
            with VideoWriter(str(final), fps=25) as w:
                for i in range(3):
                    w.write(media_kit.pattern_frame(i))
    assert final.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_enospc_creating_the_temporary_file(tmp_path, monkeypatch):
    real_open = os.open

    def full(path, flags, mode=0o777, **kw):
        if ".partial" in os.fspath(path):
            _enospc()
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(uri_module.os, "open", full)
    with pytest.raises(StorageError, match=r"out\.bin: cannot write: No space left on device"):
        write_bytes(str(tmp_path / "out.bin"), b"x")
    assert os.listdir(tmp_path) == []


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(ValueError, match="the caller's own"):
        with atomic_output(str(tmp_path / "out.bin")):
            raise ValueError("the caller's own error")
    assert os.listdir(tmp_path) == []


# -- an object store that fails ------------------------------------------------------------------------
class FlakyFS(MemoryFileSystem):
    """An in-memory filesystem whose put_file / get_file / cat_file fail the first ``failures`` calls."""

    def __init__(self, failures: int, error: Exception):
        super().__init__(skip_instance_cache=True)
        self.store = {}
        self.pseudo_dirs = [""]
        self.failures, self.error = failures, error
        self.calls = {"put_file": 0, "get_file": 0, "cat_file": 0}

    def _maybe_fail(self, name):
        self.calls[name] += 1
        if self.calls[name] <= self.failures:
            raise self.error

    def put_file(self, lpath, rpath, **kw):
        self._maybe_fail("put_file")
        return super().put_file(lpath, rpath, **kw)

    def get_file(self, rpath, lpath, **kw):
        self._maybe_fail("get_file")
        return super().get_file(rpath, lpath, **kw)

    def cat_file(self, path, **kw):
        self._maybe_fail("cat_file")
        return super().cat_file(path, **kw)


def _use(monkeypatch, fs) -> None:
    monkeypatch.setattr(uri_module, "filesystem", lambda uri: (fs, uri.split("://", 1)[1]))


# What s3fs raises for S3's answers once botocore's and its own retries are spent
# (s3fs.errors.translate_boto_error), and network failures.
SLOW_DOWN = OSError(errno.EBUSY, "Please reduce your request rate.")
INTERNAL = OSError(getattr(errno, "EREMOTEIO", errno.EIO), "We encountered an internal error. Please try again.")
RESET = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")


@pytest.mark.parametrize("error", [SLOW_DOWN, INTERNAL, RESET], ids=["503-slowdown", "500-internal", "reset"])
def test_upload_is_retried_until_it_succeeds(monkeypatch, error):
    fs = FlakyFS(failures=2, error=error)
    _use(monkeypatch, fs)
    write_bytes("s3://bucket/out/result.json", b'{"ok": 1}')
    assert fs.calls["put_file"] == 3
    fs.failures = 0
    assert fs.cat_file("bucket/out/result.json") == b'{"ok": 1}'


def test_upload_that_keeps_failing_is_a_clear_error_and_leaves_no_object(monkeypatch, media_kit):
    fs = FlakyFS(failures=10 ** 6, error=SLOW_DOWN)
    _use(monkeypatch, fs)
    uri = "s3://bucket/renders/x.mp4"
    with pytest.raises(StorageError) as err:
        with VideoWriter(uri, fps=25) as w:
            for i in range(3):
                w.write(media_kit.pattern_frame(i))
    assert fs.calls["put_file"] == 4
    message = str(err.value)
    assert message.startswith(f"{uri}: upload failed 4 times") and "reduce your request rate" in message
    assert not fs.exists("bucket/renders/x.mp4")


def test_permanent_upload_errors_are_not_retried(monkeypatch):
    fs = FlakyFS(failures=10 ** 6, error=PermissionError(errno.EACCES, "Access Denied"))
    _use(monkeypatch, fs)
    with pytest.raises(StorageError, match=r"^s3://bucket/a\.bin: cannot upload \(PermissionError"):
        write_bytes("s3://bucket/a.bin", b"x")
    assert fs.calls["put_file"] == 1


def test_reads_are_retried_then_named(monkeypatch):
    fs = FlakyFS(failures=3, error=INTERNAL)
    fs.pipe_file("bucket/in/a.txt", b"hello")
    _use(monkeypatch, fs)
    assert read_bytes("s3://bucket/in/a.txt") == b"hello"
    assert fs.calls["cat_file"] == 4

    fs.failures, fs.calls["get_file"] = 10 ** 6, 0
    with pytest.raises(StorageError, match=r"^s3://bucket/in/a\.txt: download failed 4 times"):
        with local_input("s3://bucket/in/a.txt"):
            pass
    assert fs.calls["get_file"] == 4

    fs.failures = 0
    with local_input("s3://bucket/in/a.txt") as path:
        assert open(path, "rb").read() == b"hello"
    with pytest.raises(MediaNotFoundError, match="missing.txt"):  # not found: no retries
        read_bytes("s3://bucket/in/missing.txt")


def test_what_counts_as_transient():
    from botocore.exceptions import ClientError, EndpointConnectionError
    from s3fs.errors import translate_boto_error

    def client_error(status, code):
        return ClientError({"Error": {"Code": code, "Message": code},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    for status, code in ((503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable"),
                         (502, "BadGateway"), (429, "TooManyRequests"), (400, "RequestTimeout")):
        assert is_transient(client_error(status, code)), code
        assert is_transient(translate_boto_error(client_error(status, code))), code
    for status, code in ((404, "NoSuchKey"), (403, "AccessDenied"), (400, "InvalidArgument")):
        assert not is_transient(client_error(status, code)), code
        assert not is_transient(translate_boto_error(client_error(status, code))), code
    assert is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(RESET) and is_transient(TimeoutError())
    assert not is_transient(OSError(errno.ENOSPC, "full")) and not is_transient(FileNotFoundError())
    assert not is_transient(ValueError("bad"))


# -- the same against the moto server, with faults injected between client and server -----------------
@pytest.fixture
def faulty_s3(s3_bucket, s3_server, monkeypatch):
    """A proxy in front of moto that answers 503 SlowDown to the first ``state['fail']`` PUTs
    (and every PUT while it is negative); s3fs and botocore make one attempt each, so the retries
    seen are this project's."""
    import http.client
    import http.server
    import threading
    from urllib.parse import urlparse

    target = urlparse(s3_server)
    state = {"fail": 0, "puts": 0}

    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.command == "PUT":
                state["puts"] += 1
                if state["fail"] < 0 or state["puts"] <= state["fail"]:
                    payload = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                               b"<Message>Please reduce your request rate.</Message></Error>")
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            conn.request(self.command, self.path, body=body, headers=dict(self.headers))
            response = conn.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    import s3fs

    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    options = uri_module.storage_options

    def one_attempt():
        return {**options(), "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}},
                "skip_instance_cache": True}

    monkeypatch.setattr(uri_module, "storage_options", one_attempt)
    try:
        yield s3_bucket, state
    finally:
        server.shutdown()
        server.server_close()


def test_s3_throttling_is_retried_then_reported(faulty_s3, caplog):
    import s3fs

    bucket, state = faulty_s3
    check = s3fs.S3FileSystem(**uri_module.storage_options())

    state.update(fail=2, puts=0)
    write_bytes(f"s3://{bucket}/faults/ok.json", b"{}")
    assert check.cat_file(f"{bucket}/faults/ok.json") == b"{}"

    state.update(fail=-1, puts=0)
    uri = f"s3://{bucket}/faults/never.wav"
    with pytest.raises(StorageError, match=rf"^{uri}: upload failed 4 times.*reduce your request rate"):
        save_wav(uri, np.zeros(1600, np.float32), 16000)
    # s3fs may repeat a refused PUT once on its own; the attempts logged are this project's.
    assert 4 <= state["puts"] <= 8
    assert sum("never.wav: upload failed" in r.getMessage() for r in caplog.records) == 3
    assert not check.exists(f"{bucket}/faults/never.wav")
