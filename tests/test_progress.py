"""The sweep's Tune hooks on a real Tune run: a stopped conductor ends every trial."""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

from ray import tune

from orchestrator.progress import WhenConductorStops

STEPS = 1500  # 75 s at 0.05 s a step


def test_trials_stop_once_the_conductor_has_stopped(tmp_path: Path, ray_cluster: None) -> None:
    reported = tmp_path / "reported"
    reported.mkdir()

    def keep_reporting(config: dict) -> None:  # nested: Ray's workers cannot import tests/
        for step in range(STEPS):
            tune.report({"step": step})
            if step == 3:
                (reported / str(config["trial"])).touch()
            time.sleep(0.05)

    conductor_failed = threading.Event()

    def fail_once_both_trials_report() -> None:
        deadline = time.monotonic() + 300
        while len(list(reported.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        conductor_failed.set()

    threading.Thread(target=fail_once_both_trials_report, daemon=True).start()
    tuner = tune.Tuner(
        tune.with_resources(keep_reporting, {"CPU": 0.5}),
        param_space={"trial": tune.grid_search([0, 1])},
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "tune"), stop=WhenConductorStops(conductor_failed.is_set)
        ),
    )
    steps = [result.metrics["step"] for result in tuner.fit()]
    assert len(steps) == 2 and all(3 <= step < STEPS - 1 for step in steps), steps


def test_a_stopper_unpickled_elsewhere_never_stops() -> None:
    stopper = pickle.loads(pickle.dumps(WhenConductorStops(lambda: True)))
    assert not stopper.stop_all() and not stopper("trial", {})
