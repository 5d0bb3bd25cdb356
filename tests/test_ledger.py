"""The sweep ledger without Ray: what each planned model has come to, written atomically."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.ledger import LEDGER_FILE, Entry, Ledger, LedgerError, score_job_key

ROOT = Path(__file__).resolve().parents[1]


def planned(storage: Path) -> Ledger:
    ledger = Ledger.load(str(storage))
    ledger.plan({"t1": Entry("trial", "m|d|lr=1|ls=0"), "base:m": Entry("base", "m|base")})
    return ledger


def test_a_trial_moves_through_its_states_and_each_write_is_read_back(tmp_path: Path) -> None:
    ledger = planned(tmp_path)
    ledger.set_parent("parent")
    ledger.set_run_ids({"t1": "run-1", "base:m": "run-2"})
    ledger.update("t1", "running")
    ledger.update("t1", "failed", error="NonFiniteLossError at step 2")
    ledger.update("t1", "running", error=None)  # --resume retries a failed trial
    ledger.update("t1", "trained", export="/x/hf_model", export_digest="abc")
    key = score_job_key("t1", "global_mmlu", "de", "test")
    ledger.record_score(key, "cache-1")
    ledger.update("t1", "finished")

    again = Ledger.load(str(tmp_path))
    assert again.parent_run_id == "parent"
    assert again.entry("t1") == Entry(
        "trial", "m|d|lr=1|ls=0", "finished", "run-1", "/x/hf_model", "abc", None
    )
    assert again.is_scored(key, "cache-1") and not again.is_scored(key, "other settings")
    # planning again keeps what is known and adds only new models
    again.plan({"t1": Entry("trial", "m|d|lr=1|ls=0"), "t2": Entry("trial", "m|d|lr=2|ls=0")})
    assert Ledger.load(str(tmp_path)).entry("t1").status == "finished"
    assert Ledger.load(str(tmp_path)).entry("t2").status == "scheduled"


@pytest.mark.parametrize(
    ("path", "status"),
    [(["running", "trained", "finished"], "running"), (["running", "trained"], "failed")],
)
def test_finished_work_cannot_be_undone(tmp_path: Path, path: list[str], status: str) -> None:
    ledger = planned(tmp_path)
    for step in path:
        ledger.update("t1", step)  # type: ignore[arg-type]
    with pytest.raises(LedgerError, match=f"cannot go from {path[-1]} to {status}"):
        ledger.update("t1", status)  # type: ignore[arg-type]


def test_a_foreign_or_broken_ledger_is_refused_with_a_way_out(tmp_path: Path) -> None:
    (tmp_path / LEDGER_FILE).write_text(json.dumps({"version": 99}))
    with pytest.raises(LedgerError, match="version 99.*another --output-dir"):
        Ledger.load(str(tmp_path))
    (tmp_path / LEDGER_FILE).write_text('{"version": 1, "entr')
    with pytest.raises(LedgerError, match="not valid JSON"):
        Ledger.load(str(tmp_path))


def test_a_writer_killed_mid_write_leaves_a_complete_ledger(tmp_path: Path) -> None:
    """SIGKILL a process that rewrites a large ledger in a loop: what is left is always one
    of its complete states, never a torn file."""
    writer = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from orchestrator.ledger import Entry, Ledger
ledger = Ledger.load({str(tmp_path)!r})
ledger.plan({{f"t{{i}}": Entry("trial", "x" * 200) for i in range(2000)}})
print("ready", flush=True)
n = 0
while True:
    n += 1
    ledger.record_score(f"job{{n}}", "k" * 24)
"""
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.5)  # hundreds of rewrites of a ~600 kB file
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ledger = Ledger.load(str(tmp_path))
    assert len(ledger.entries) == 2000
    n = len(ledger.scores)
    assert n > 0 and set(ledger.scores) == {f"job{i}" for i in range(1, n + 1)}
