"""Join a Ray cluster or start a private local instance, with Ray's own chatter kept off the
terminal unless --verbose (used by the sweep and by `python -m trainers.sft`)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator


def init_ray(address: str | None, verbose: bool) -> None:
    """`ray.init` on `address`, or on a new local instance (never a `ray start` cluster that
    happens to run on this machine). Without `verbose`, workers' output stays in Ray's log files
    and Ray's C++ components log only fatal errors: the driver otherwise prints an ERROR line
    per Ray Data actor pool (its actors' constructor arguments live in the object store, which
    Ray warns about, ray-project/ray#53727), and a laptop run has nothing to act on in them."""
    import ray

    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    settings = dict(
        address=address or "local",
        log_to_driver=verbose,
        logging_level=logging.INFO if verbose else logging.WARNING,
    )
    if verbose:
        ray.init(**settings)
        return
    # Read when the driver's core worker and a local instance's processes start; the C++ logger
    # announces the level it read on stderr, hence the silenced start-up (errors still raise).
    with _environment(RAY_BACKEND_LOG_LEVEL="fatal"), _stderr_silenced():
        ray.init(**settings)
    # Ray Data logs each execution plan at INFO and draws progress bars; calsweep's own progress
    # lines say enough (data preparation, scoring).
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block; the caller's environment is restored after."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 goes to /dev/null for the block (C++ code writes there directly)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
