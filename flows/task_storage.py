"""Where a shard's parameters and result travel between hosts: S3, not a folder under PREFECT_HOME.

`.delay()` stores a task run's parameters with the block that PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK
names, and the task worker reads them there and writes the result beside them. Unset, that is a
folder under the submitting process's PREFECT_HOME, which a GPU worker on another machine cannot
read: it fails every shard with `Path .../storage/parameters/<id> does not exist`.

This block keeps them under an S3 prefix through adapters/infra/storage.S3Store. It holds only the prefix:
each process reaches S3 with its own endpoint and credentials (adapters/infra/settings.py), so no secret is
stored on the Prefect server or shown in its UI. (prefect-aws's S3Bucket block would do the same, but
its aiobotocore pins an older boto3 than the one the project uses.)

    python -m flows.task_storage s3://bucket/prefix   # registers `stylematrix-s3/shards` on PREFECT_API_URL
"""

from __future__ import annotations

import sys

import anyio.to_thread
from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import WritableFileSystem

from adapters.infra.settings import get_settings
from adapters.infra.storage import S3Store, join_uri

BLOCK_NAME = "shards"


class S3TaskStorage(WritableFileSystem):
    """Task parameters and results under an S3 prefix (see the module docstring)."""

    _block_type_name = "Stylematrix S3 Storage"
    _block_type_slug = "stylematrix-s3"
    _description = "Task parameters and results of stylematrix shards in S3, read with each process's own credentials."

    basepath: str

    def _uri(self, path: str) -> str:
        return join_uri(self.basepath, *[p for p in str(path).split("/") if p])

    def _read(self, path: str) -> bytes:
        return S3Store.shared(get_settings()).get(self._uri(path))

    def _write(self, path: str, content: bytes) -> str:
        uri = self._uri(path)
        S3Store.shared(get_settings()).put(uri, content)
        return uri

    async def aread_path(self, path: str) -> bytes:
        return await anyio.to_thread.run_sync(self._read, path)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return self._read(path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return await anyio.to_thread.run_sync(self._write, path, content)

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> str:
        return self._write(path, content)


def slug(name: str = BLOCK_NAME) -> str:
    """The value of PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK for the block saved as `name`."""
    return f"{S3TaskStorage.get_block_type_slug()}/{name}"


def register(basepath: str, name: str = BLOCK_NAME) -> str:
    """Register the block type and save the block at `basepath` on the current Prefect API; returns its slug."""
    if not basepath.startswith("s3://"):
        raise ValueError(f"task storage: expected an s3://bucket/prefix, got {basepath!r}")
    S3TaskStorage.register_type_and_schema()
    S3TaskStorage(basepath=basepath.rstrip("/")).save(name, overwrite=True)
    return slug(name)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m flows.task_storage s3://bucket/prefix")
    print(register(sys.argv[1]))
