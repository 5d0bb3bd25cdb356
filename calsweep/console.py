"""What the CLIs print: time-stamped progress lines, and libraries kept quiet unless --verbose.

Light on purpose (standard library only): `--help` and `--dry-run` import this, never torch or Ray.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings

# Read by datasets, transformers and Ray when they are imported, here and in every Ray worker
# started after this (a local Ray instance passes the driver's environment on to its workers).
QUIET_ENVIRONMENT = {
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # "Generating test split: ..." per split loaded
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # also transformers' "Loading weights: ..."
    "TRANSFORMERS_VERBOSITY": "error",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # "Creating initial MLflow database tables..." at import
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PYTHONWARNINGS": "ignore",  # library deprecation notices in Ray workers
}


def say(message: str) -> None:
    """One progress line, time-stamped, flushed (the sweep's only chatter on stdout)."""
    print(f"[calsweep {time.strftime('%H:%M:%S')}] {message}", flush=True)


def quiet_libraries(verbose: bool) -> None:
    """Silence library progress bars, notices and warnings on the default path of a CLI; with
    `verbose` nothing is touched, so every library speaks as it normally does. Call it before the
    libraries are imported (their verbosity is read from the environment at import)."""
    if verbose:
        return
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore")
    if "datasets" in sys.modules:  # imported before (a test, a notebook): tell it directly
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    for name in ("datasets", "transformers", "mlflow", "alembic", "deepspeed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # DeepSpeed's own logger resets its level when deepspeed is imported, and warns at import on
    # a machine without a GPU ("Setting accelerator to CPU..."); a filter outlives the reset.
    logging.getLogger("DeepSpeed").addFilter(lambda record: record.levelno >= logging.ERROR)
