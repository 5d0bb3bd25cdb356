"""One sweep per output directory, with real processes holding, losing and racing for the lock."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_mini_sweep

from orchestrator.lock import LOCK_NAME, SweepLocked, sweep_lock

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
HOST = socket.gethostname()
HOLD = """
import sys, time
from pathlib import Path
from orchestrator.lock import sweep_lock
with sweep_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def holder(sweep_dir: Path) -> Iterator[subprocess.Popen]:
    """Another process that holds `sweep_dir`'s lock until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(sweep_dir)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def stale_lock(sweep_dir: Path) -> int:
    """The lock of a SIGKILLed sweep (it had no chance to release); returns its pid."""
    with holder(sweep_dir) as proc:
        pid = proc.pid
    assert json.loads((sweep_dir / LOCK_NAME).read_text())["pid"] == pid
    return pid


def test_a_second_sweep_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "runs" / "mini"
    with holder(sweep_dir) as proc:
        with pytest.raises(SweepLocked) as info, sweep_lock(sweep_dir):
            pytest.fail("acquired a lock that another live process holds")
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"{sweep_dir} is in use by another sweep (pid {proc.pid} on ")
        assert f"on host {HOST}, started " in message
        assert message.endswith("): wait for it to finish, or use another --output-dir")
        assert json.loads((sweep_dir / LOCK_NAME).read_text())["pid"] == proc.pid  # untouched


def test_a_killed_sweeps_lock_is_taken_over(tmp_path: Path, capsys) -> None:
    sweep_dir = tmp_path / "mini"
    pid = stale_lock(sweep_dir)
    with sweep_lock(sweep_dir) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    out = capsys.readouterr().out
    assert f"taking over the stale lock of {sweep_dir} (pid {pid} on host {HOST} is gone)" in out
    assert len(out.splitlines()) == 1
    assert not path.exists()


def test_the_lock_names_its_owner_and_release_removes_it(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "new" / "mini"  # created if missing
    with sweep_lock(sweep_dir) as path:
        owner = json.loads(path.read_text())
        assert (owner["host"], owner["pid"]) == (HOST, os.getpid())
        assert owner["started"][:4].isdigit() and "T" in owner["started"]
        assert owner["command"]
    assert not path.exists()
    with sweep_lock(sweep_dir):  # and it can be taken again
        assert path.exists()


def test_an_exception_inside_releases_the_lock(tmp_path: Path) -> None:
    with pytest.raises(KeyError), sweep_lock(tmp_path) as path:
        raise KeyError("trial failed")
    assert not path.exists()


def test_release_leaves_a_lock_that_is_not_ours(tmp_path: Path) -> None:
    with sweep_lock(tmp_path) as path:
        path.write_text(json.dumps({"host": HOST, "pid": 1, "started": "x", "command": "y"}))
    assert path.exists()


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path: Path) -> None:
    path = tmp_path / LOCK_NAME
    owner = {"host": "elsewhere", "pid": 4242, "started": "2026-12-02T03:00:00", "command": "x"}
    path.write_text(json.dumps(owner))
    with pytest.raises(SweepLocked) as info, sweep_lock(tmp_path):
        pytest.fail("acquired a lock held on another host")
    message = str(info.value)
    assert "\n" not in message
    assert f"{tmp_path} is in use by a sweep on another host (pid 4242 on host elsewhere" in message
    assert "cannot be checked from here" in message and f"remove {path}" in message
    assert json.loads(path.read_text()) == owner


RACE = """
import sys, time
from pathlib import Path
from orchestrator.lock import SweepLocked, sweep_lock
sweep_dir, go, result = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
result.with_suffix(".ready").touch()
while not go.exists():
    time.sleep(0.002)
try:
    with sweep_lock(sweep_dir):
        result.write_text("got")
        while not (go.parent / "stop").exists():
            time.sleep(0.01)
except SweepLocked:
    result.write_text("refused")
"""


def test_racing_takeovers_of_a_stale_lock_leave_one_owner(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "mini"
    stale_lock(sweep_dir)
    n = 4
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RACE,
                str(sweep_dir),
                str(tmp_path / "go"),
                str(tmp_path / f"{i}.out"),
            ],
            cwd=ROOT,
            env=ENV,
            stdout=(tmp_path / f"{i}.log").open("w"),
        )
        for i in range(n)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("*.ready"))) < n:
            assert time.monotonic() < deadline, "racers did not start"
            time.sleep(0.01)
        (tmp_path / "go").touch()
        while len(list(tmp_path.glob("*.out"))) < n:
            assert all(p.poll() in (None, 0) for p in procs), "a racer crashed"
            assert time.monotonic() < deadline, "racers did not finish"
            time.sleep(0.01)
        time.sleep(0.1)  # the last result's write
        results = sorted((tmp_path / f"{i}.out").read_text() for i in range(n))
        assert results == ["got"] + ["refused"] * (n - 1)
    finally:
        (tmp_path / "stop").touch()
        for proc in procs:
            proc.wait(timeout=30)
    logs = "".join((tmp_path / f"{i}.log").read_text() for i in range(n))
    assert logs.count("taking over the stale lock") == 1


# `python -m orchestrator.sweep`, reporting whether Ray was imported before it exited.
CLI = """
import json, runpy, sys
sys.argv = ["orchestrator.sweep", *sys.argv[1:]]
try:
    runpy.run_module("orchestrator.sweep", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code
else:
    code = 0
print(json.dumps({"code": code, "ray": "ray" in sys.modules}))
"""


def test_the_cli_on_a_locked_output_dir_exits_2_before_ray_starts(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    sweep = write_mini_sweep(tmp_path, tmp_path / "model")
    with holder(tmp_path / "runs" / "mini") as proc:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", CLI, str(sweep)],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert json.loads(done.stdout.splitlines()[-1]) == {"code": 2, "ray": False}
    assert time.monotonic() - started < 60
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: {tmp_path / 'runs' / 'mini'} is in use by another sweep ")
    assert f"(pid {proc.pid} on host {HOST}, started " in line
