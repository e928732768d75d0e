"""One driver per store: `psec run`, `psec serve` and `psec tune` hold the store's driver
lease while they run, and a second driver on the same store is refused in one line before
it starts anything (it would fit the same items again and lose the race to register them).

A local store is held with an exclusive `flock` on `.locks/driver.lock`, which the kernel
releases when the process dies however it dies, so a killed driver's rerun is never
refused; `.locks/driver.json` says who holds it. An object store has no locks: there the
lease is the object `drivers/lease.json` (holder, token, heartbeat), renewed every
`LEASE_S / 3` seconds by a thread. A driver takes it when it is absent, older than
`LEASE_S`, or held by a dead process of this host; it then waits `SETTLE_S` and reads it
back, and of two drivers that wrote it at once only the one whose token is there goes on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from library.errors import StoreError
from library.store import SkillStore

LEASE_S = 60.0
"""An object-store lease not renewed for this long belongs to a driver that is gone."""
SETTLE_S = 1.0
"""How long a driver waits after writing an object-store lease before reading it back."""
LOCAL_FOLDER, LOCAL_LOCK, LOCAL_INFO = ".locks", "driver.lock", "driver.json"
REMOTE_FOLDER, REMOTE_LEASE = "drivers", "lease.json"


@contextlib.contextmanager
def driver_lease(store_uri: str, command: str) -> Iterator[None]:
    """Hold `store_uri` for this driver while the block runs; StoreError (one line, naming
    the holder) if another driver holds it. `command` says what this driver is doing."""
    store = SkillStore(store_uri)
    store.check_writable()
    holder = {"command": command, "host": socket.gethostname(), "pid": os.getpid(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "token": uuid.uuid4().hex}
    lease = _LocalLease(store, holder) if store.local_path else _RemoteLease(store, holder)
    lease.acquire()
    try:
        yield
    finally:
        # Never hides what ended the block: a store that cannot be reached now (the reason
        # a run may be ending) leaves a lease that lapses or a lock the kernel drops.
        with contextlib.suppress(StoreError, OSError):
            lease.release()


def _read_holder(store: SkillStore, folder: str, name: str) -> dict | None:
    """The holder a lease file names; None if there is none (or it is unreadable: a driver
    killed while writing it, as good as none)."""
    data = store.get_file(folder, name)
    if data is None:
        return None
    with contextlib.suppress(ValueError, TypeError):
        return json.loads(data)
    return None


def _busy(store: SkillStore, holder: dict) -> StoreError:
    return StoreError(
        f"store {store.uri} is in use by another psec driver ({holder.get('command', '?')} "
        f"on {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since "
        f"{holder.get('started', '?')}): wait for it to finish, or use another --store")


class _LocalLease:
    def __init__(self, store: SkillStore, holder: dict):
        self.store, self.holder = store, holder
        self.folder = os.path.join(store.local_path, LOCAL_FOLDER)
        self.fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, LOCAL_LOCK)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _busy(self.store, _read_holder(self.store, LOCAL_FOLDER, LOCAL_INFO) or {}) from None
            # The holder before us unlinks the file as it lets go: a lock on the file it
            # unlinked is no lock on the path, so take the one at the path instead.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            os.close(fd)
        self.fd = fd
        self.store.put_file(LOCAL_FOLDER, LOCAL_INFO, json.dumps(self.holder).encode())


    def release(self) -> None:
        """Leaves the store as it found it: no lock file, no holder file."""
        self.store.delete_file(LOCAL_FOLDER, LOCAL_INFO)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.folder, LOCAL_LOCK))  # still locked: nobody takes it
        with contextlib.suppress(OSError):
            os.rmdir(self.folder)  # only if empty (no item locks of the store's)
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None


class _RemoteLease:
    def __init__(self, store: SkillStore, holder: dict):
        self.store, self.holder = store, holder
        self.stop = threading.Event()
        self.renewer: threading.Thread | None = None

    def _read(self) -> dict | None:
        return _read_holder(self.store, REMOTE_FOLDER, REMOTE_LEASE)

    def _write(self) -> None:
        lease = {**self.holder, "renewed": time.time()}
        self.store.put_file(REMOTE_FOLDER, REMOTE_LEASE, json.dumps(lease).encode())

    def acquire(self) -> None:
        current = self._read()
        if current is not None and _alive(current):
            raise _busy(self.store, current)
        self._write()
        _settle()
        current = self._read()
        if current is None or current.get("token") != self.holder["token"]:
            raise _busy(self.store, current or {})
        self.renewer = threading.Thread(target=self._renew, name="psec-store-lease",
                                        daemon=True)
        self.renewer.start()

    def _renew(self) -> None:
        while not self.stop.wait(LEASE_S / 3):
            with contextlib.suppress(OSError, StoreError):  # the next renewal tries again
                self._write()

    def release(self) -> None:
        self.stop.set()
        if self.renewer is not None:
            self.renewer.join()
        current = self._read()
        if current is not None and current.get("token") == self.holder["token"]:
            self.store.delete_file(REMOTE_FOLDER, REMOTE_LEASE)


def _settle() -> None:
    """Give a rival that read the old lease when we did the time to write its own."""
    time.sleep(SETTLE_S)


def _alive(lease: dict) -> bool:
    """Whether an object-store lease still belongs to a running driver."""
    if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int):
        try:
            os.kill(lease["pid"], 0)
        except ProcessLookupError:
            return False  # a driver of this machine that died (a killed `psec run`)
        except PermissionError:
            pass  # someone else's process: alive
    renewed = lease.get("renewed")
    return isinstance(renewed, int | float) and time.time() - renewed < LEASE_S
