"""The object store goes away mid-write (issue: faults a cluster really has): a TCP proxy in
front of the moto S3 server is cut during a registration and during a checkpoint upload.
The write fails with one line naming the store, no partial item is visible, and the same
call succeeds once the server is back (the moto server keeps its state: only the route to
it was cut)."""

import re
import socket
import threading

import pytest
from store_builders import BUCKET, base_tensors, s3_query

from library.errors import StoreError
from library.store import WEIGHTS_FILE, SkillStore

pytest_plugins = ["store_fixtures"]


class Route:
    """127.0.0.1:port → the moto server, which `cut()` breaks (listener and open
    connections closed) and `restore()` opens again on the same port."""

    def __init__(self, target: int):
        self.target = target
        self.port = 0
        self.listener: socket.socket | None = None
        self.open: list[socket.socket] = []
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.port, self.listener = listener.getsockname()[1], listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        for sock in [self.listener, *self.open]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.open = []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def route(moto_port: int, aws_env: None):
    proxy = Route(moto_port)
    yield proxy
    proxy.cut()


def test_a_registration_cut_off_midway_is_one_line_and_leaves_no_item(route: Route, monkeypatch):
    uri = f"s3://{BUCKET}/store-outage?{s3_query(route.port)}"
    store = SkillStore(uri)
    store.register("b0", "base", {"kind": "base"}, base_tensors())
    real_write = SkillStore._write

    def cut_after_the_weights(self, path, data, *, exclusive=False):
        real_write(self, path, data, exclusive=exclusive)
        if path.endswith(WEIGHTS_FILE):
            route.cut()  # the weights landed; the config and the manifest entry will not

    monkeypatch.setattr(SkillStore, "_write", cut_after_the_weights)
    with pytest.raises(StoreError, match=f"^store at {re.escape(uri)} is not writable: ") as info:
        store.register("b1", "base", {"kind": "base"}, base_tensors())
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    route.restore()
    assert [entry.name for entry in store.list()] == ["b0"]  # no half of b1 is visible
    store.register("b1", "base", {"kind": "base"}, base_tensors())  # the same call, back
    assert [entry.name for entry in store.list()] == ["b0", "b1"]
    config, tensors = store.load("b1")
    assert config == {"kind": "base"} and tensors.keys() == base_tensors().keys()


def test_a_checkpoint_upload_cut_off_is_one_line_naming_the_store(route: Route):
    from pipeline.checkpoints import TaskSession

    uri = f"s3://{BUCKET}/store-outage-ckpt?{s3_query(route.port)}"

    class Job:  # what TaskSession reads of a FitJob
        gpus_per_worker = 0
        run_name = "outage__walk"

    session = TaskSession(Job(), uri)
    meta = {"fingerprint": "f", "stage_index": 0, "step": 10, "report": {}}
    state = {"learner": {}, "optimizer": {}, "carry": {}}
    session.report({}, meta, state)
    route.cut()
    with pytest.raises(StoreError, match=f"^store at {re.escape(uri)}: checkpoint .* could not "
                       "be written: ") as info:
        session.report({}, {**meta, "step": 20}, state)
    assert "\n" not in str(info.value)
    route.restore()
    resume = TaskSession(Job(), uri).load_resume("f")
    assert resume is not None and resume.step == 10  # the last whole checkpoint
    session.report({}, {**meta, "step": 20}, state)  # and uploading works again
    assert TaskSession(Job(), uri).load_resume("f").step == 20


@pytest.mark.slow
def test_a_stream_cut_off_from_its_store_fails_in_one_line_and_the_same_run_finishes_it(
        aws_env, ray_cluster, route: Route, moto_port: int, tmp_path):
    """`psec run`'s driver on a bucket whose route is cut while the base fits (after its
    first checkpoint reached S3): one StoreError line naming the store, nothing registered;
    the same run once the route is back resumes the fit from its S3 checkpoint and ends.
    The Ray workers have the credentials from `ray_cluster` (tests/conftest.py)."""
    import time

    from pipeline_builders import put_datasets, tiny_task, write_stream
    from store_builders import files

    from pipeline.driver import DriverOptions, run_plan
    from pipeline.fit_job import FitOptions
    from pipeline.plan import plan_stream
    from tasks.spec import load_stream

    uri = f"s3://{BUCKET}/store-outage-run?{s3_query(route.port)}"
    around = f"s3://{BUCKET}/store-outage-run?{s3_query(moto_port)}"  # not through the route
    # 400 steps, a checkpoint (an S3 upload) every 20: the fit is still running seconds
    # after its first checkpoint lands, and the run after the outage trains the rest.
    tasks = [tiny_task("stand", role="base", steps=400)]
    put_datasets(uri, tasks)
    plan = plan_stream(load_stream(write_stream(tmp_path / "s.yaml", tasks, name="outage")))
    options = DriverOptions(progress=False, fit=FitOptions(log_every=20, checkpoint_every=20))
    outcome: dict = {}

    def drive() -> None:
        try:
            outcome["summary"] = run_plan(plan, uri, options)
        except Exception as error:  # what the user would see
            outcome["error"] = error

    driver = threading.Thread(target=drive)
    driver.start()
    deadline = time.monotonic() + 240
    while not any(key.startswith("checkpoints/outage__stand/task-") for key in files(around)):
        assert driver.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.2)
    route.cut()
    driver.join(timeout=300)
    error = outcome.get("error")
    assert isinstance(error, StoreError), outcome
    assert str(error).startswith(f"store at {uri}") and "\n" not in str(error), str(error)
    assert SkillStore(around).list() == []  # nothing registered, nothing half-visible

    route.restore()
    summary = run_plan(plan, uri, options)
    assert summary.fitted == ["stand"]
    store = SkillStore(around)
    assert [entry.name for entry in store.list()] == ["stand"]
    assert store.entry("stand").metrics["resumed_from"] > 0  # from its S3 checkpoint
    assert not [key for key in files(around) if key.startswith("checkpoints/outage__stand/")]
