"""The layout of a training run's checkpoints and of its exported model, in one place.

A Ray Train run (`trainers.train_loop.train_func`) reports these checkpoints:

- ``checkpoint_stepNNNNNN/deepspeed`` (`step_checkpoint_name`, `DS_STATE_DIR`): DeepSpeed
  state, every rank its shard; resumable.
- ``checkpoint_final/hf_model`` (`FINAL_CHECKPOINT`, `HF_EXPORT_DIR`): the export, a Hugging
  Face model directory written by `write_export`, its manifest ``calsweep_export.json`` last.
- ``failed_nonfinite_*`` (`failure_checkpoint_name`): only ``nonfinite_loss.json``
  (`write_failure`), when the loss went non-finite; `exported_model` raises it on the driver.

The manifest, written on the worker that wrote the files, from the fresh files on its disk::

    {"format": 1, "digest": "<sha256 hex>",
     "files": [{"path": "config.json", "size": 712, "sha256": "<hex>"}, ...]}

``path`` is relative to the export directory ("/"-separated); files are sorted by path. The
``digest`` is the sha256 of the files' `sha256sum` listing (a line ``<sha256>  <path>\\n`` per
file, sorted by path): an identity of the model's content that nobody has to read the weights
again for. `read_export` trusts an export that the manifest describes, checking only a listing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from calsweep.storage import filesystem, join, location_of, read_text, write_text

FINAL_CHECKPOINT = "checkpoint_final"  # checkpoint_dir_name of the worker's final report
HF_EXPORT_DIR = "hf_model"
DS_STATE_DIR = "deepspeed"
FAILURE_FILE = "nonfinite_loss.json"
MANIFEST_FILE = "calsweep_export.json"
MANIFEST_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf: retrying would train on garbage again, so the run stops."""

    def __init__(self, step: int, value: float, quantity: str = "training loss") -> None:
        super().__init__(
            f"non-finite {quantity} {value} at optimizer step {step}; lower the learning rate "
            "or check the data (the run stopped without retrying)"
        )
        self.step = step
        self.value = value
        self.quantity = quantity

    def __reduce__(self) -> tuple[type, tuple[int, float, str]]:  # crosses Ray processes
        return (self.__class__, (self.step, self.value, self.quantity))


@dataclass(frozen=True)
class ExportedModel:
    """A complete export: its location (a local path, or a URI under remote storage) and the
    digest of its content (the manifest's)."""

    location: str
    digest: str


def step_checkpoint_name(step: int) -> str:
    return f"checkpoint_step{step:06d}"


def failure_checkpoint_name(error: NonFiniteLossError) -> str:
    """Carries step and value for readers that only look for ``hf_model/``."""
    quantity = error.quantity.replace(" ", "_")
    return f"failed_nonfinite_{quantity}_{error.value}_at_step{error.step:06d}"


def ends_run(checkpoint_dir: Path) -> bool:
    """Whether a checkpoint ends its run: it holds the export or a non-finite-loss record."""
    return (checkpoint_dir / HF_EXPORT_DIR).is_dir() or (checkpoint_dir / FAILURE_FILE).is_file()


def write_failure(error: NonFiniteLossError, checkpoint_dir: Path) -> None:
    record = {"step": error.step, "value": error.value, "quantity": error.quantity}
    (checkpoint_dir / FAILURE_FILE).write_text(json.dumps(record))


def write_export(module: Any, tokenizer: Any, state_dict: Any, directory: Path) -> ExportedModel:
    """Save `module` (with `state_dict`) and `tokenizer` as a Hugging Face directory, then its
    manifest: the files' sizes and sha256, read back from the fresh files here."""
    directory = Path(directory)
    module.save_pretrained(directory, state_dict=state_dict)
    tokenizer.save_pretrained(directory)
    files = []
    for file in directory.rglob("*"):
        path = file.relative_to(directory).as_posix()
        if path == MANIFEST_FILE or not file.is_file():
            continue
        with file.open("rb") as handle:
            sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
            size = os.fstat(handle.fileno()).st_size
        files.append({"path": path, "size": size, "sha256": sha256})
    files.sort(key=lambda f: f["path"])
    digest = _digest(files)
    manifest = {"format": MANIFEST_FORMAT, "digest": digest, "files": files}
    write_text(str(directory / MANIFEST_FILE), json.dumps(manifest, indent=1))
    return ExportedModel(str(directory), digest)


def read_export(location: str) -> ExportedModel | None:
    """The export at `location` (local or URI) if it is complete, else None.

    Complete: the manifest exists and every file it lists exists with the listed size (a
    truncated copy or upload does not). Reads the manifest and one listing, never a weight file.
    """
    text = read_text(join(location, MANIFEST_FILE))
    if text is None:
        return None
    try:
        manifest = json.loads(text)
        expected = {f["path"]: f["size"] for f in manifest["files"]}
        if manifest["format"] != MANIFEST_FORMAT or manifest["digest"] != _digest(
            manifest["files"]
        ):
            return None
    except (ValueError, KeyError, TypeError):  # not a manifest this version wrote
        return None
    fs, root = filesystem(location)
    root = root.rstrip("/")
    present = {
        info.path[len(root) + 1 :]: info.size
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True))
        if info.type == pafs.FileType.File
    }
    if any(present.get(path) != size for path, size in expected.items()):
        return None
    return ExportedModel(location, manifest["digest"])


def exported_model(result: Any) -> ExportedModel:
    """The exported model of a finished `TorchTrainer` run (``result`` from ``fit()``).

    Raises `NonFiniteLossError` (step, value) when the run stopped on a non-finite loss, and
    RuntimeError when the run has no complete export.
    """
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training run at {result.path} reported no checkpoint")
    root = location_of(result.checkpoint.filesystem, result.checkpoint.path)
    failure = read_text(join(root, FAILURE_FILE))
    if failure is not None:
        record = json.loads(failure)
        raise NonFiniteLossError(record["step"], record["value"], record["quantity"])
    export = read_export(join(root, HF_EXPORT_DIR))
    if export is None:
        raise RuntimeError(f"no complete exported model in {root}")
    return export


def _digest(files: list[dict[str, Any]]) -> str:
    """sha256 of the `sha256sum` listing of `files`, sorted by path."""
    listing = "".join(
        f"{f['sha256']}  {f['path']}\n" for f in sorted(files, key=lambda f: f["path"])
    )
    return hashlib.sha256(listing.encode()).hexdigest()
