"""Tune trial names and directories follow the trials' MLflow run names, with the lr as written."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

from ray.tune.experiment import Trial

from orchestrator.execution import tune_job, tune_trial_dirname, tune_trial_name
from orchestrator.plan import TrialSpec


def tune_trial(learning_rate: float, label_smoothing: float, model: str = "smollm2-135m") -> Trial:
    """A Tune trial whose config is what `run_tune` gives the trial of this grid point."""
    spec = TrialSpec(model, "alpaca-sample", learning_rate, label_smoothing, seed=0)
    job = SimpleNamespace(id="3f9a0c", run_name=spec.run_name)
    return Trial("run_trial", config={"job": tune_job(job)}, trial_id="5c1d2_00003", stub=True)


def test_dirname_is_the_run_name_with_the_exact_lr() -> None:
    trial = tune_trial(5e-05, 0.1)
    assert trial.config["job"]["id"] == "3f9a0c"
    assert tune_trial_name(trial) == "smollm2-135m|alpaca-sample|lr=5e-05|ls=0.1"
    assert tune_trial_dirname(trial) == "smollm2-135m_alpaca-sample_lr=5e-05_ls=0.1_5c1d2_00003"
    assert tune_trial_dirname(tune_trial(2e-4, 0.0)).startswith(
        "smollm2-135m_alpaca-sample_lr=0.0002_ls=0_"
    )
    assert "lr=1e+10" in tune_trial_dirname(tune_trial(1e10, 0.0))


def test_dirname_is_filesystem_safe_and_the_creators_pickle() -> None:
    name = tune_trial_dirname(tune_trial(1e-3, 0.0, model="org/model|v2 beta"))
    assert name == "org_model_v2_beta_alpaca-sample_lr=0.001_ls=0_5c1d2_00003"
    # Tune pickles its TuneConfig with the experiment state
    assert pickle.loads(pickle.dumps(tune_trial_dirname)) is tune_trial_dirname
    assert pickle.loads(pickle.dumps(tune_trial_name)) is tune_trial_name
