"""MLflow writes that a tracking server could not take yet, kept on disk in their order.

When an `http://` tracking server goes away mid-sweep, training and scoring go on: each write the
driver makes is appended here (artifacts copied beside it, since they come from temporary
directories) and sent again, in order, once the server answers; what is still here when the
sweep ends is sent first by the next run of the same command. Every write is idempotent in
MLflow (metrics carry their original timestamp and step, params and tags their value, statuses
and artifacts overwrite), so a write that reached the server before its answer was lost does not
duplicate anything when it is sent again.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

OPS_FILE = "ops.jsonl"


def is_unreachable(err: Exception) -> bool:
    """MLflow's REST client reports a server it cannot reach (refused, reset, timed out after
    its own retries) as an MlflowException 'API request to ... failed with ...'."""
    text = str(err)
    return text.startswith("API request to") and "failed with" in text


class Backlog:
    """An append-only list of pending writes: `(op, kwargs)` as JSON lines."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ops: list[dict[str, Any]] = []
        path = directory / OPS_FILE
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    self.ops.append(json.loads(line))
                except ValueError:  # the last line of a process that died while appending
                    break

    def __len__(self) -> int:
        return len(self.ops)

    def add(self, op: str, **kwargs: Any) -> None:
        if op == "log_artifact":  # the file may live in a temporary directory: keep a copy
            source = Path(kwargs["local_path"])
            kept = self.directory / "artifacts" / uuid.uuid4().hex / source.name
            kept.parent.mkdir(parents=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, kept)
            kwargs = {**kwargs, "local_path": str(kept)}
        entry = {"op": op, **kwargs}
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / OPS_FILE).open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        self.ops.append(entry)

    def send(self, apply: Callable[[dict[str, Any]], None]) -> None:
        """Apply the pending writes in order; stops (raising) at the first that fails, keeping
        it and the rest. Once all are sent, the directory is removed. The file is rewritten
        once per call, not per write: a process killed while sending leaves writes that were
        sent in the file, and sending them again is harmless (see the module docstring)."""
        sent = 0
        try:
            for entry in self.ops:
                apply(entry)
                sent += 1
        finally:
            if sent:
                del self.ops[:sent]
                if self.ops:
                    self._rewrite()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _rewrite(self) -> None:
        tmp = self.directory / f".{OPS_FILE}.tmp"
        tmp.write_text("".join(json.dumps(entry) + "\n" for entry in self.ops))
        tmp.replace(self.directory / OPS_FILE)
