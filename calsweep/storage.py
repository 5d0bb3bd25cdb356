"""Sweep storage that is a local directory or a remote URI (`s3://bucket/prefix`, `gs://...`).

Ray Tune/Train checkpoints, exported models and trial records live in the sweep's storage. On a
cluster without a shared filesystem that is object storage; every node reaches it through
`pyarrow.fs` (the same layer Ray Train uses, so credentials and endpoints come from the usual
environment, e.g. AWS_ENDPOINT_URL). Code that needs a model on local disk asks `local_copy`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from calsweep.models import cache_root


def is_uri(location: str) -> bool:
    return "://" in location


def join(location: str, *parts: str) -> str:
    if is_uri(location):
        return "/".join([location.rstrip("/"), *parts])
    return str(Path(location, *parts))


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a location and the location's path inside it."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def location_of(fs: pafs.FileSystem, path: str) -> str:
    """The location (local path or URI) of `path` inside a pyarrow filesystem, e.g. of a Ray
    Train checkpoint (`checkpoint.filesystem`, `checkpoint.path`)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    scheme = {"s3": "s3", "gcs": "gs"}.get(fs.type_name)
    if scheme is None:
        raise ValueError(f"unsupported storage filesystem {fs.type_name!r} (use s3:// or gs://)")
    return f"{scheme}://{path}"


def read_text(location: str) -> str | None:
    """A file's text, or None when it does not exist."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


@contextmanager
def atomic_output(location: str) -> Iterator[pa.NativeFile]:
    """A stream to write a file so that readers see the old file or the whole new one, never a
    part: a temporary file renamed into place locally when the block ends without an error;
    object stores publish an object only once it is complete."""
    fs, path = filesystem(location)
    if is_uri(location):
        with fs.open_output_stream(path) as stream:
            yield stream
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with fs.open_output_stream(str(tmp)) as stream:
            yield stream
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(location: str, text: str) -> None:
    """Write a text file atomically (`atomic_output`)."""
    with atomic_output(location) as stream:
        stream.write(text.encode())


def copy_to_local(location: str, destination: Path) -> None:
    """Copy a directory (local or remote) into a local directory, created if missing."""
    fs, path = filesystem(location)
    destination.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(destination), source_filesystem=fs)


def remote_version(location: str) -> str:
    """An identity of a remote directory's current content without reading it: a hash of its
    location and its files' names, sizes and modification times (a rewrite changes it)."""
    fs, root = filesystem(location)
    listing = sorted(
        (info.path, info.size, str(info.mtime))
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        if info.type == pafs.FileType.File
    )
    if not listing:
        raise FileNotFoundError(f"{location} holds no files")
    return hashlib.sha256(json.dumps([location, listing]).encode()).hexdigest()[:20]


def local_copy(location: str) -> str:
    """A local directory with the content of `location`: itself when local, else a copy in the
    node's cache, downloaded once per `remote_version` and renamed into place when complete."""
    if not is_uri(location):
        return location
    target = cache_root() / "remote" / remote_version(location)
    if not target.is_dir():
        tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex}.tmp")
        copy_to_local(location, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process on this node finished the same copy first
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
