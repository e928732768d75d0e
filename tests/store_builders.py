"""What the store tests put in a store, and how they look at it behind its back.

`listing(store.uri)` and `put_object(store.uri, …)` read and write a store's files with
pyarrow directly, on a local folder and on a bucket alike. The moto S3 server the S3 tests
use is the plugin tests/store_fixtures.py.
"""

import socket

import pyarrow.fs as pafs
import torch

from library.store import SkillStore

BUCKET = "psec-test"
REGION = "us-east-1"
# Dummy credentials: pyarrow signs every request, moto accepts any key.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",  # never wait on an instance-metadata lookup
}
LOCKS = ".locks"
"""The folder of per-name lock files, which only local stores have."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (once this returns)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_query(port: int) -> str:
    """The URI query that points pyarrow's S3 client at the moto server on `port`."""
    return f"endpoint_override=127.0.0.1:{port}&scheme=http&region={REGION}"


def listing(uri: str, folder: str = "") -> dict[str, bytes | None]:
    """Everything under `<store>/<folder>` by its path relative to the store: a file's
    bytes, None for a folder (a local folder, or a prefix the bucket lists as one)."""
    fs, root = pafs.FileSystem.from_uri(uri)
    selector = pafs.FileSelector(
        f"{root}/{folder}".rstrip("/"), recursive=True, allow_not_found=True
    )
    out: dict[str, bytes | None] = {}
    for info in fs.get_file_info(selector):
        key = info.path[len(root) + 1:]
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[key] = f.read()
        else:
            out[key] = None
    return out


def files(uri: str, folder: str = "") -> dict[str, bytes]:
    """The files of `listing`, without its folders."""
    return {k: v for k, v in listing(uri, folder).items() if v is not None}


def put_object(uri: str, key: str, data: bytes) -> None:
    """Write `<store>/<key>` behind the store's back (a hand edit, a crash's leftovers)."""
    fs, root = pafs.FileSystem.from_uri(uri)
    path = f"{root}/{key}"
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def untouched(uri: str) -> bool:
    """Whether nothing exists at the store's root: no local folder, no object under the prefix."""
    fs, root = pafs.FileSystem.from_uri(uri)
    return fs.get_file_info(root).type == pafs.FileType.NotFound


def lock_files(store: SkillStore, *names: str) -> list[str]:
    """The lock files writing `names` leaves: one per name on a local store, none remotely."""
    return [f"{LOCKS}/{n}.lock" for n in names] if store.local_path is not None else []


def base_tensors() -> dict[str, torch.Tensor]:
    """A base-shaped tensor dict with every dtype the store must keep: float32, float64,
    float16, int64, bool."""
    g = torch.Generator().manual_seed(0)
    return {
        "net.0.weight": torch.randn(256, 33, generator=g),  # [hidden, act + obs + t_emb]
        "net.0.bias": torch.randn(256, generator=g),
        "normalizer.mean": torch.randn(24, generator=g).double(),
        "ln.weight": torch.randn(256, generator=g).half(),
        "steps": torch.arange(5),
        "mask": torch.tensor([True, False, True]),
    }


def add_base(store: SkillStore, name: str = "b0") -> None:
    store.register(name, "base", {"obs_dim": 24, "act_dim": 6}, base_tensors())
