"""The backup manifest (client.backup_manifest): pure JSON and files."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from client.backup_manifest import (
    MANIFEST,
    IncompleteBackupError,
    Manifest,
    ManifestError,
    RegionEntry,
    file_crc32,
    read_manifest,
    write_manifest,
)


def entry(i: int, start: bytes, end: bytes, **kw: Any) -> RegionEntry:
    fields: dict[str, Any] = {
        "region_id": 10 + i,
        "start_key": start,
        "end_key": end,
        "conf_ver": 2,
        "version": 3 + i,
        "applied_index": 100 + i,
        "applied_term": 6,
        "file": f"region-{i:06d}-{10 + i}.snap",
        "size": 1000 + i,
        "crc32": 0xDEADBEEF,
        "keys": 7 * i,
        "data_sha256": bytes([i]) * 32,
    }
    fields.update(kw)
    return RegionEntry(**fields)


MANIFEST_3 = Manifest(
    cluster_id=(1 << 63) + 5,
    started_at="2024-06-01T10:00:00+00:00",
    finished_at="2024-06-01T10:01:00+00:00",
    regions=(
        entry(0, b"", b"g"),
        entry(1, b"g", b"p\x00\xff"),
        entry(2, b"p\x00\xff", b""),
    ),
)


def test_a_manifest_round_trips_through_its_file(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, MANIFEST_3)
    assert path == tmp_path / MANIFEST
    manifest, raw = read_manifest(tmp_path)
    assert manifest == MANIFEST_3
    assert raw == path.read_bytes()
    doc = json.loads(raw)
    assert doc["format"] == "shardkv-backup" and doc["version"] == 1
    assert doc["total_keys"] == 21 and doc["total_bytes"] == 3003
    assert doc["regions"][1]["start_key"] == "67" and doc["regions"][1]["end_key"] == "7000ff"
    assert doc["regions"][0]["epoch"] == {"conf_ver": 2, "version": 3}
    # Written atomically: no temp file stays behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]


def test_a_directory_without_manifest_is_an_incomplete_backup(tmp_path: Path) -> None:
    (tmp_path / "region-000000-2.snap").write_bytes(b"x")
    with pytest.raises(IncompleteBackupError, match="did not finish"):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match="no such directory"):
        read_manifest(tmp_path / "nope")


def _doc() -> dict[str, Any]:
    return MANIFEST_3.to_json()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="tar"), "not a shardkv backup"),
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d.update(cluster_id=-1), "cluster_id"),
        (lambda d: d.update(regions={}), "not a list"),
        (lambda d: d.update(regions=[]), "no region"),
        (lambda d: d["regions"][0].update(id=0), "regions[0].id"),
        (lambda d: d["regions"][0].update(size=True), "regions[0].size"),
        (lambda d: d["regions"][0].update(crc32=1 << 32), "regions[0].crc32"),
        (lambda d: d["regions"][0].update(start_key="6"), "not lowercase hex"),
        (lambda d: d["regions"][0].update(end_key="6G"), "not lowercase hex"),
        (lambda d: d["regions"][0].update(data_sha256="00"), "not a SHA-256"),
        (lambda d: d["regions"][0]["epoch"].update(version="3"), "epoch.version"),
        (lambda d: d["regions"][0].update(file="../x.snap"), "not a plain file name"),
        (lambda d: d["regions"][0].update(file=MANIFEST), "not a plain file name"),
        (lambda d: d["regions"][2].update(file=d["regions"][1]["file"]), "same file"),
        (lambda d: d["regions"].pop(1), "do not tile"),
        (lambda d: d["regions"].reverse(), "do not tile"),
        (lambda d: d["regions"].pop(), "not at the end"),
        (lambda d: d["regions"][0].update(start_key="00"), "do not tile"),
        (lambda d: d["regions"][1].update(end_key="67"), "not above its start"),
        (lambda d: d["regions"][1].update(end_key=""), "is not the last"),
    ],
)
def test_a_bad_manifest_is_refused_with_the_reason(edit: Any, message: str) -> None:
    doc = _doc()
    edit(doc)
    with pytest.raises(ManifestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Manifest.from_json(doc)


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b"[" * 100_000])
def test_a_manifest_that_is_not_a_json_object_is_refused(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / MANIFEST).write_bytes(raw)
    with pytest.raises(ManifestError):
        read_manifest(tmp_path)


def test_file_crc32_reads_the_whole_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10_000
    (tmp_path / "f").write_bytes(data)
    assert file_crc32(tmp_path / "f") == (len(data), zlib.crc32(data))
