"""The sweep's state, in one place: what each planned model and score job has come to.

`<storage>/ledger.json` (local or `s3://`) holds, per trial, its MLflow run id, status, export
location, export digest and error; per base model its run id and status; per score job its
status and cache key; and the parent run's id. Only the sweep driver writes it, and every write
replaces the whole file atomically (`calsweep.storage.write_text`), so a crash leaves the last
complete state. `--resume` reads it and nothing else to decide what is done: a finished trial
is not trained again, a scored split is not scored again, a run id is never created twice.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Literal

from calsweep.storage import join, read_text, write_text

LEDGER_FILE = "ledger.json"
VERSION = 1
Status = Literal["scheduled", "running", "trained", "finished", "failed"]
# trained: exported, not yet fully scored; finished: scored and recorded (terminal)
TRANSITIONS: dict[str, set[str]] = {
    "scheduled": {"running", "trained", "finished", "failed"},
    "running": {"running", "trained", "failed"},  # running again: Ray Train restarted it
    "failed": {"running", "failed"},  # --resume retries a failed trial
    "trained": {"finished"},
    "finished": set(),
}


class LedgerError(RuntimeError):
    """A ledger that cannot be read, or a transition that would lose finished work."""


@dataclass(frozen=True)
class Entry:
    """One planned model: a trial (key = trial id) or a base model (key = `base:<model>`)."""

    kind: Literal["trial", "base"]
    name: str
    status: Status = "scheduled"
    run_id: str | None = None
    export: str | None = None
    export_digest: str | None = None
    error: str | None = None


class Ledger:
    """The sweep's state document; every change is written before the call returns."""

    def __init__(self, location: str, data: dict) -> None:
        self.location = location
        self.parent_run_id: str | None = data.get("parent_run_id")
        self.entries = {key: Entry(**value) for key, value in data.get("entries", {}).items()}
        self.scores: dict[str, str] = dict(data.get("scores", {}))  # score job key -> cache key

    @classmethod
    def load(cls, storage: str) -> Ledger:
        """The ledger in `storage`, or an empty one for a new sweep."""
        location = join(storage, LEDGER_FILE)
        text = read_text(location)
        if text is None:
            return cls(location, {})
        try:
            data = json.loads(text)
        except ValueError as err:
            raise LedgerError(f"{location} is not valid JSON ({err})") from None
        if data.get("version") != VERSION:
            raise LedgerError(
                f"{location} has version {data.get('version')!r}, this calsweep writes "
                f"{VERSION}: finish the sweep with the calsweep that started it, or start a new "
                "one in another --output-dir"
            )
        return cls(location, data)

    def entry(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def plan(self, entries: dict[str, Entry]) -> None:
        """Add the planned models that the ledger does not know yet (all, for a new sweep)."""
        new = {key: entry for key, entry in entries.items() if key not in self.entries}
        if new:
            self.entries.update(new)
            self.save()

    def set_parent(self, run_id: str) -> None:
        self.parent_run_id = run_id
        self.save()

    def set_run_ids(self, run_ids: dict[str, str]) -> None:
        for key, run_id in run_ids.items():
            self.entries[key] = replace(self.entries[key], run_id=run_id)
        self.save()

    def update(self, key: str, status: Status, **fields: str | None) -> Entry:
        """Move one model to `status` (with its export, digest or error); refuses a move that
        would undo finished work, such as retraining a finished trial."""
        entry = self.entries[key]
        if status not in TRANSITIONS[entry.status]:
            raise LedgerError(f"{entry.name}: cannot go from {entry.status} to {status}")
        self.entries[key] = replace(entry, status=status, **fields)
        self.save()
        return self.entries[key]

    def record_score(self, job_key: str, cache_key: str) -> None:
        self.scores[job_key] = cache_key
        self.save()

    def is_scored(self, job_key: str, cache_key: str) -> bool:
        """Scored with these exact inputs: a changed export or scoring setting scores again."""
        return self.scores.get(job_key) == cache_key

    def save(self) -> None:
        data = {
            "version": VERSION,
            "parent_run_id": self.parent_run_id,
            "entries": {key: asdict(entry) for key, entry in self.entries.items()},
            "scores": self.scores,
        }
        write_text(self.location, json.dumps(data, indent=1, sort_keys=True))


def score_job_key(model_key: str, benchmark: str, language: str, split: str) -> str:
    return f"{model_key}/{benchmark}/{language}/{split}"
