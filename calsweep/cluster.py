"""Join a Ray cluster or start a private local instance, with Ray's own chatter kept off the
terminal unless --verbose (used by the sweep and by `python -m trainers.sft`)."""

from __future__ import annotations

import logging
import os


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
    backend_level = {} if verbose else {"RAY_BACKEND_LOG_LEVEL": "fatal"}
    previous = {name: os.environ.get(name) for name in backend_level}
    os.environ.update(backend_level)  # read by the driver's core worker and the processes
    try:  # that a local instance starts, when they start: the caller's environment is restored
        ray.init(
            address=address or "local",
            log_to_driver=verbose,
            logging_level=logging.INFO if verbose else logging.WARNING,
        )
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
