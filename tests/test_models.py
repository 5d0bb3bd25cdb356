"""Model sources: the packaged GGUF is converted once, even when resolved concurrently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# A fresh interpreter, so that transformers is imported for the first time by the two threads,
# as in the sweep driver (the conductor thread resolves the base models while the main thread
# prepares the SFT data).
TWO_THREADS = """
import json, threading
from calsweep.models import SMOLLM2_SOURCE, resolve_model
paths, errors = [], []
def resolve():
    try:
        paths.append(resolve_model(SMOLLM2_SOURCE))
    except Exception as err:
        errors.append(repr(err))
threads = [threading.Thread(target=resolve) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"paths": paths, "errors": errors}))
"""


def test_two_threads_resolving_the_packaged_model_of_a_fresh_cache(tmp_path: Path) -> None:
    env = {**os.environ, "CALSWEEP_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", TWO_THREADS], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["errors"] == []
    target = tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1"
    assert got["paths"] == [str(target)] * 2
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in target.iterdir()
    }
    # nothing but the model and its lock is left: no staging directory of a second conversion
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        ".SmolLM2-135M-Instruct.Q4_1.lock",
        "SmolLM2-135M-Instruct.Q4_1",
    ]
