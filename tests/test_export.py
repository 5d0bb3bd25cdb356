"""The export layout (`trainers.export`): the manifest written with a real tiny model, its digest
against independent hashing, completeness on local disk and on a real S3 API (moto's server)
from the manifest and a listing alone, and the driver's reading of a finished run's result."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from calsweep.storage import filesystem, join
from trainers.export import (
    FAILURE_FILE,
    HF_EXPORT_DIR,
    MANIFEST_FILE,
    ExportedModel,
    NonFiniteLossError,
    exported_model,
    read_export,
    write_export,
    write_failure,
)


@pytest.fixture(scope="module")
def export(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model written by `write_export`, as rank 0 writes the final one."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    directory = tmp_path_factory.mktemp("export") / HF_EXPORT_DIR
    written = write_export(model, tokenizer, model.state_dict(), directory)
    assert written == read_export(str(directory))
    return directory


def upload(local: Path, location: str) -> None:
    fs, path = filesystem(location)
    pafs.copy_files(str(local), path, destination_filesystem=fs)


def sha256sum_digest(directory: Path) -> str:
    """The documented digest, by coreutils: sha256 of `sha256sum`'s listing, sorted by path."""
    names = sorted(p.name for p in directory.iterdir() if p.name != MANIFEST_FILE)
    listing = subprocess.run(["sha256sum", *names], cwd=directory, capture_output=True, check=True)
    return hashlib.sha256(listing.stdout).hexdigest()


def test_manifest_lists_every_file_with_its_size_and_sha256(export: Path) -> None:
    manifest = json.loads((export / MANIFEST_FILE).read_text())
    on_disk = {
        p.name: (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in export.iterdir()
        if p.name != MANIFEST_FILE
    }
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= on_disk.keys()
    assert {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]} == on_disk
    assert [f["path"] for f in manifest["files"]] == sorted(on_disk)
    assert manifest["digest"] == sha256sum_digest(export)
    assert read_export(str(export)) == ExportedModel(str(export), manifest["digest"])
    AutoModelForCausalLM.from_pretrained(export)  # the manifest does not disturb HF loading


@pytest.mark.parametrize("remote", [False, True])
def test_a_truncated_missing_or_unlisted_export_is_incomplete(
    export: Path, tmp_path: Path, remote: bool, request
) -> None:
    root = join(request.getfixturevalue("s3_bucket"), "exports") if remote else str(tmp_path)
    digest = json.loads((export / MANIFEST_FILE).read_text())["digest"]

    def placed(name: str, change=lambda model: None) -> str:
        """A copy of the export, changed, at `root`/`name`."""
        model = tmp_path / "copies" / name
        shutil.copytree(export, model)
        change(model)
        if not remote:
            return str(model)
        upload(model, join(root, name))
        return join(root, name)

    def truncate(model: Path) -> None:  # one byte short, as after an interrupted upload
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1])

    complete = placed("complete")
    assert read_export(complete) == ExportedModel(complete, digest)
    assert read_export(placed("truncated", truncate)) is None
    assert read_export(placed("missing-file", lambda m: (m / "tokenizer.json").unlink())) is None
    assert read_export(placed("no-manifest", lambda m: (m / MANIFEST_FILE).unlink())) is None
    assert read_export(join(root, "nothing-here")) is None


@contextmanager
def opened_files(directory: Path) -> Iterator[list[str]]:
    """The names of the files in `directory` that any process opens meanwhile (inotify:
    it sees opens from C++ too, such as pyarrow's, and root's, which permissions don't stop)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    assert fd >= 0 and libc.inotify_add_watch(fd, str(directory).encode(), 0x20) >= 0  # IN_OPEN
    names: list[str] = []
    try:
        yield names
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:  # no events
            data = b""
        offset = 0
        while offset < len(data):
            _, _, _, length = struct.unpack_from("iIII", data, offset)
            names.append(data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode())
            offset += 16 + length
    finally:
        os.close(fd)


def test_read_export_opens_the_manifest_and_no_other_file(export: Path) -> None:
    with opened_files(export) as opened:
        assert read_export(str(export)) is not None
    assert {name for name in opened if name} == {MANIFEST_FILE}  # "": the listing's opendir

    with opened_files(export) as opened:  # the watch does see a weight file being read
        (export / "model.safetensors").read_bytes()
    assert opened == ["model.safetensors"]


@pytest.mark.parametrize("remote", [False, True])
def test_exported_model_of_a_run_result(export: Path, tmp_path: Path, remote: bool, request):
    """`exported_model` on what `TorchTrainer.fit()` returns: the final checkpoint's export, the
    non-finite-loss record as its error, or RuntimeError."""
    root = join(request.getfixturevalue("s3_bucket"), "ray") if remote else str(tmp_path)
    final, failed, empty = tmp_path / "final", tmp_path / "failed", tmp_path / "empty"
    shutil.copytree(export, final / HF_EXPORT_DIR)
    failed.mkdir()
    write_failure(NonFiniteLossError(3, float("nan"), "gradient norm"), failed)
    (empty / HF_EXPORT_DIR).mkdir(parents=True)
    (empty / HF_EXPORT_DIR / "config.json").write_text("{}")

    def result(checkpoint_dir: Path | None) -> SimpleNamespace:
        if checkpoint_dir is None:
            return SimpleNamespace(error=None, checkpoint=None, path=root)
        location = join(root, checkpoint_dir.name)
        if remote:
            upload(checkpoint_dir, location)
        fs, path = filesystem(location)
        checkpoint = SimpleNamespace(filesystem=fs, path=path)
        return SimpleNamespace(error=None, checkpoint=checkpoint, path=root)

    model = exported_model(result(final))
    assert model.location.endswith(f"final/{HF_EXPORT_DIR}") and model.location.startswith(
        "s3://" if remote else "/"
    )
    assert model == read_export(model.location) and model.digest == sha256sum_digest(export)
    assert json.loads((failed / FAILURE_FILE).read_text())["quantity"] == "gradient norm"
    with pytest.raises(NonFiniteLossError, match="gradient norm nan at optimizer step 3") as err:
        exported_model(result(failed))
    assert err.value.step == 3
    with pytest.raises(RuntimeError, match="no complete exported model"):
        exported_model(result(empty))
    with pytest.raises(RuntimeError, match="reported no checkpoint"):
        exported_model(result(None))
    with pytest.raises(ValueError, match="from the run"):
        exported_model(SimpleNamespace(error=ValueError("from the run")))
