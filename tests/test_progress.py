"""The sweep's Tune hooks on a real Tune run: a stopped conductor ends every trial."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ray import tune

from orchestrator.progress import WhenConductorStops

STEPS = 1500  # 75 s at 0.05 s a step


def test_trials_stop_once_the_conductor_has_stopped(tmp_path: Path, ray_cluster: None) -> None:
    def keep_reporting(config: dict) -> None:  # nested: Ray's workers cannot import tests/
        for step in range(STEPS):
            tune.report({"step": step})
            time.sleep(0.05)

    conductor_failed = threading.Event()
    threading.Timer(5.0, conductor_failed.set).start()
    tuner = tune.Tuner(
        tune.with_resources(keep_reporting, {"CPU": 0.5}),
        param_space={"trial": tune.grid_search([0, 1])},
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), stop=WhenConductorStops(conductor_failed.is_set)
        ),
    )
    started = time.monotonic()
    results = tuner.fit()
    steps = [result.metrics["step"] for result in results]
    assert len(steps) == 2 and all(0 < step < STEPS - 1 for step in steps), steps
    assert time.monotonic() - started < 60  # an unstopped trial reports for 75 s


def test_a_stopper_unpickled_elsewhere_never_stops() -> None:
    import pickle

    stopper = pickle.loads(pickle.dumps(WhenConductorStops(lambda: True)))
    assert not stopper.stop_all() and not stopper("trial", {})
