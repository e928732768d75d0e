"""The moto S3 server behind the S3 store tests, as a pytest plugin.

Modules load it with `pytest_plugins = ["store_fixtures"]`: its fixtures are defined once
for the whole session, so the server starts at most once per test run however many modules
use it, and not at all in a run that selects no S3 test.
"""

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pyarrow.fs as pafs
import pytest
from store_builders import AWS_ENV, BUCKET, REGION, free_port, s3_query


@pytest.fixture(scope="session")
def moto_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A moto S3 server on a free port holding bucket BUCKET, one per test session."""
    pytest.importorskip(
        "moto", reason="moto is not installed: `pip install -e '.[dev]'` brings moto[server]"
    )
    port = free_port()
    # The server logs every request: to a file, since an unread pipe fills and stalls it.
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                pytest.fail(f"moto server exited: {log.read_text()[-500:]}")
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
