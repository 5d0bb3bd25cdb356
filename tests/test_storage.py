"""Sweep storage on local disk and on a real S3 API (moto's server): text records and local
copies of remote exports (export completeness: tests/test_export.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from calsweep.storage import (
    copy_to_local,
    filesystem,
    join,
    local_copy,
    location_of,
    read_text,
    remote_version,
    write_text,
)


def upload(local: Path, location: str) -> None:
    fs, path = filesystem(location)
    pafs.copy_files(str(local), path, destination_filesystem=fs)


@pytest.mark.parametrize("remote", [False, True])
def test_text_records_round_trip(tmp_path: Path, remote: bool, request) -> None:
    root = join(request.getfixturevalue("s3_bucket"), "records") if remote else str(tmp_path)
    location = join(root, "trials", "abc.json")
    assert read_text(location) is None
    write_text(location, '{"a": 1}')
    write_text(location, '{"a": 2}')
    assert read_text(location) == '{"a": 2}'
    if not remote:  # no temporary file is left behind
        assert [p.name for p in (tmp_path / "trials").iterdir()] == ["abc.json"]


@pytest.fixture
def remote_export(
    tmp_path: Path, tiny_model_dir: Path, s3_bucket: str, monkeypatch, request
) -> str:
    """The tiny model uploaded under a prefix of its own; this node's cache inside tmp_path."""
    monkeypatch.setenv("CALSWEEP_CACHE", str(tmp_path / "cache"))
    remote = join(s3_bucket, "exports", request.node.name)
    upload(tiny_model_dir, remote)
    return remote


def test_remote_export_is_copied_once_per_node(
    tmp_path: Path, tiny_model_dir: Path, remote_export: str
) -> None:
    remote = remote_export
    local = Path(local_copy(remote))
    assert local.is_relative_to(tmp_path / "cache")
    for original in tiny_model_dir.iterdir():
        assert (local / original.name).read_bytes() == original.read_bytes()
    stamp = (local / "config.json").stat().st_mtime_ns
    assert local_copy(remote) == str(local)
    assert (local / "config.json").stat().st_mtime_ns == stamp  # not downloaded again
    assert local_copy(str(tiny_model_dir)) == str(tiny_model_dir)  # local stays local

    out = tmp_path / "out"
    copy_to_local(remote, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tiny_model_dir.iterdir())


def test_location_of_a_checkpoint_filesystem(s3_bucket: str) -> None:
    fs, path = filesystem(join(s3_bucket, "ray", "train-x"))
    assert location_of(fs, path) == "s3://calsweep/ray/train-x"
    assert location_of(pafs.LocalFileSystem(), "/tmp/x") == "/tmp/x"


def test_a_changed_remote_export_is_copied_again(remote_export: str, s3_bucket: str) -> None:
    remote = remote_export
    first = local_copy(remote)
    write_text(join(remote, "config.json"), '{"changed": true}')
    second = local_copy(remote)
    assert second != first and (Path(second) / "config.json").read_text() == '{"changed": true}'
    with pytest.raises(FileNotFoundError, match="holds no files"):
        local_copy(join(s3_bucket, "exports", "nothing"))


def test_remote_version_downloads_nothing_and_follows_rewrites(
    remote_export: str, tmp_path: Path
) -> None:
    version = remote_version(remote_export)
    assert not (tmp_path / "cache").exists()
    assert remote_version(remote_export) == version
    write_text(join(remote_export, "config.json"), '{"changed": true}')
    assert remote_version(remote_export) != version
