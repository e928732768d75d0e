"""The moto S3 server behind the S3 store tests, as a pytest plugin.

Modules load it with `pytest_plugins = ["store_fixtures"]`: its fixtures are defined once
for the whole session, so one server serves every module that uses it, and a run that
selects no S3 test starts none. The server is launched as soon as collection shows a
selected test needs it, so its start-up (importing moto, seconds) overlaps the tests that
run before the first S3 one instead of delaying it.
"""

import importlib.util
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import IO

import pyarrow.fs as pafs
import pytest
from store_builders import AWS_ENV, BUCKET, REGION, free_port, s3_query

_server: tuple[subprocess.Popen, int, IO[bytes]] | None = None
"""The launched server, its port and its log, once `_launch` has run."""


def _launch() -> tuple[subprocess.Popen, int, IO[bytes]]:
    global _server
    if _server is None:
        port = free_port()
        # The server logs every request: to a file, since an unread pipe fills and stalls it.
        log = tempfile.TemporaryFile()
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        _server = (server, port, log)
    return _server


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if importlib.util.find_spec("moto") is not None and any(
        "moto_port" in item.fixturenames for item in session.items
    ):
        _launch()


def pytest_sessionfinish(session: pytest.Session) -> None:
    # A server launched for tests that never ran (a run stopped by -x or Ctrl-C) stops too.
    if _server is not None and _server[0].poll() is None:
        _server[0].kill()
        _server[0].wait()


@pytest.fixture(scope="session")
def moto_port() -> Iterator[int]:
    """A moto S3 server on a free port holding bucket BUCKET, one per test session."""
    pytest.importorskip(
        "moto", reason="moto is not installed: `pip install -e '.[dev]'` brings moto[server]"
    )
    server, port, log = _launch()
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                log.seek(0)
                pytest.fail(f"moto server exited: {log.read()[-500:].decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("moto server did not listen within 30 s")
                time.sleep(0.1)
        # Keys given here, not through the environment, which only `aws_env` sets.
        pafs.S3FileSystem(
            access_key=AWS_ENV["AWS_ACCESS_KEY_ID"], secret_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            endpoint_override=f"127.0.0.1:{port}", scheme="http", region=REGION,
            allow_bucket_creation=True,
        ).create_dir(BUCKET)
        yield port
    finally:
        server.kill()
        server.wait()
        log.close()


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    """The dummy AWS credentials in the environment for one module (its Ray workers, started
    after it, inherit them), so the rest of the session runs without them."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in AWS_ENV.items():
            patch.setenv(key, value)
        yield


@pytest.fixture
def s3_uri(moto_port: int, aws_env: None) -> str:
    """A fresh store prefix in the moto bucket, per test."""
    return f"s3://{BUCKET}/store-{uuid.uuid4().hex[:8]}?{s3_query(moto_port)}"
