"""One sweep per output directory: `<sweep_dir>/.calsweep.lock` names its owner (host, pid, start,
command), so a second sweep on the same directory stops before Ray starts instead of mixing its
trials, checkpoints and MLflow runs into the first one's.

Standard library only: the sweep CLI takes the lock before it imports Ray.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from calsweep.console import say

LOCK_NAME = ".calsweep.lock"


class SweepLocked(RuntimeError):
    """Another sweep holds the directory (or may: one on another host); the message is one line."""


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[Path]:
    """Hold `sweep_dir`'s lock for the block; released on exit, also on exceptions (a SIGKILLed
    owner leaves it behind, and the next sweep on this host takes it over)."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / LOCK_NAME
    mine = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
    }
    _acquire(path, mine)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if _read(path) == mine:  # never remove a lock that is not ours
                path.unlink()


def _acquire(path: Path, mine: dict[str, Any]) -> None:
    data = json.dumps(mine).encode()
    unreadable_since: float | None = None
    while True:
        try:  # O_EXCL: of all sweeps creating the file at once, exactly one succeeds
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            return
        try:
            held = _open(path)
        except FileNotFoundError:
            continue  # released just now: create it again
        with held:
            # Takeovers of one stale file queue up here; whoever comes second finds the path no
            # longer names the file it opened, and starts over.
            with contextlib.suppress(OSError):  # a filesystem without locks: judge unguarded
                fcntl.flock(held, fcntl.LOCK_EX)
            if not _names(path, held):
                continue
            owner = _parse(held.read())
            if owner is None:  # its creator is between open and write, or died there
                unreadable_since = unreadable_since or time.monotonic()
                if time.monotonic() - unreadable_since < 2:
                    time.sleep(0.05)
                    continue
                raise SweepLocked(
                    f"{path.parent} has an unreadable lock file: if no sweep uses this "
                    f"directory, remove {path}"
                )
            who = f"pid {owner['pid']} on host {owner['host']}"
            if owner["host"] != mine["host"]:
                raise SweepLocked(
                    f"{path.parent} is in use by a sweep on another host ({who}, started "
                    f"{owner['started']}), which cannot be checked from here: wait for it to "
                    f"finish, or use another --output-dir; if that sweep is gone, remove {path}"
                )
            if _alive(owner["pid"]):
                raise SweepLocked(
                    f"{path.parent} is in use by another sweep ({who}, started "
                    f"{owner['started']}): wait for it to finish, or use another --output-dir"
                )
            say(f"taking over the stale lock of {path.parent} ({who} is gone)")
            path.unlink()  # safe: we hold the flock, and a dead owner releases nothing


def _open(path: Path) -> BinaryIO:
    """The lock file, writable where we may (NFS grants an exclusive flock only on those)."""
    try:
        return open(path, "rb+")  # noqa: SIM115 (the caller closes it)
    except PermissionError:  # another user's lock
        return open(path, "rb")  # noqa: SIM115


def _names(path: Path, held: BinaryIO) -> bool:
    """Whether `path` still is the file open as `held` (not removed or replaced since)."""
    try:
        now = path.stat()
    except FileNotFoundError:
        return False
    then = os.fstat(held.fileno())
    return (now.st_dev, now.st_ino) == (then.st_dev, then.st_ino)


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        owner = json.loads(raw)
    except ValueError:
        return None
    keys = ("host", "pid", "started")
    if not isinstance(owner, dict) or not all(k in owner for k in keys):
        return None
    return owner if isinstance(owner["pid"], int) else None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return _parse(path.read_bytes())
    except FileNotFoundError:
        return None


def _alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
