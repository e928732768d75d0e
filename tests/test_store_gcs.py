"""The skill store on gs://, offline. There is no GCS emulator here, so the store's contract
is not run on GCS (tests/test_store_contract.py runs it on a local folder and S3); what is
tested is what needs no server: the retry limit a gs:// URI gets, and that a GCS endpoint
which does not answer is a one-line error within seconds, not a wait of minutes."""

import re
import time

import pytest
from store_builders import free_port

import library.store
from library.errors import StoreError
from library.store import GCS_RETRY_LIMIT_S, SkillStore

pytest.importorskip("pyarrow._gcsfs", reason="this pyarrow is built without GCS")


def test_a_gs_uri_gets_a_retry_limit_unless_it_sets_its_own():
    limit = f"retry_limit_seconds={GCS_RETRY_LIMIT_S}"
    store = SkillStore("gs://bucket/psec-store")  # opening a GCS store connects to nothing
    assert store.uri == f"gs://bucket/psec-store?{limit}"
    # Tools that open store paths themselves retry alike; a store made from the URI (a Ray
    # worker's, the name of the store actor) is the same store.
    assert store.uri_of("runs", "x") == f"gs://bucket/psec-store/runs/x?{limit}"
    assert SkillStore(store.uri).uri == store.uri
    emulator = "gcs://bucket/p?endpoint_override=localhost:4443&scheme=http"
    assert SkillStore(emulator).uri == f"{emulator}&{limit}"
    own = "gs://bucket/p?retry_limit_seconds=60"
    assert SkillStore(own).uri == own
    assert SkillStore("s3://bucket/p?region=us-east-1").uri == "s3://bucket/p?region=us-east-1"


def test_an_unreachable_gcs_endpoint_is_a_one_line_store_error_within_seconds(monkeypatch):
    # The default limit, made 1 s to keep the test short (3 s takes about 5 s here).
    monkeypatch.setattr(library.store, "GCS_RETRY_LIMIT_S", 1)
    # `anonymous@`: no credentials lookup (itself retried offline); nothing listens on the port.
    dead = SkillStore(
        f"gs://anonymous@psec-test/store?endpoint_override=127.0.0.1:{free_port()}&scheme=http"
    )
    assert dead.uri.endswith("&retry_limit_seconds=1")
    start = time.monotonic()
    with pytest.raises(StoreError, match=f"^store at {re.escape(dead.uri)} cannot be read: ") as info:
        dead.exists("b0")
    # pyarrow's own default retried for minutes. The limit is wall-clock time, so a busy
    # machine does not stretch it much.
    assert time.monotonic() - start < 15
    assert "\n" not in str(info.value)
    assert "error_info" not in str(info.value)  # google-cloud-cpp's repeat of the message
