"""Cheap things stay cheap: `--help` and `--dry-run` of every CLI import no torch, Ray, DeepSpeed
or MLflow (each costs seconds at start-up), checked in a fresh interpreter per command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "deepspeed", "mlflow")
# Runs the module as `python -m` would, then lists the heavy packages it imported.
PROBE = (
    f"HEAVY = {HEAVY!r}"
    + """
import json, runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code
else:
    code = 0
print(json.dumps({"code": code, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
"""
)


@pytest.mark.parametrize(
    "command",
    [
        ["orchestrator.sweep", "--help"],
        ["orchestrator.sweep", "sweeps/full.yaml", "--dry-run"],
        ["orchestrator.sweep", "sweeps/local.yaml", "--dry-run"],
        ["orchestrator.report", "--help"],
        ["evaluators.score", "--help"],
        ["trainers.sft", "--help"],
    ],
    ids=" ".join,
)
def test_help_and_dry_run_import_no_heavy_package(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["code"] in (0, None), done.stderr
    assert outcome["heavy"] == [], f"{' '.join(command)} imported {outcome['heavy']}"


def test_quiet_libraries_silence_deepspeeds_warning_at_import() -> None:
    """Without a GPU, `import deepspeed` warns "Setting accelerator to CPU..." on stdout through
    a logger whose level it resets; the CLIs' quiet default must still hide it."""
    quiet = "from calsweep.console import quiet_libraries; quiet_libraries(False); import deepspeed"
    done = subprocess.run([sys.executable, "-c", quiet], capture_output=True, text=True, check=True)
    assert done.stdout + done.stderr == ""
