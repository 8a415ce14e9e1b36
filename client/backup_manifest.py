"""The manifest of a backup directory (`manifest.json`): what `shardkv ctl
backup` wrote and `shardkv restore` checks. Pure: JSON and files, no trio.

A backup directory holds one file per region copy (a store's snapshot file:
`store_node.snapshot`) and, written last and atomically (temp file, fsync,
rename, fsync of the directory), `manifest.json`. A directory without it is
an incomplete backup (the tool stopped before the end) and restore refuses
it.

The manifest's region entries tile the key space in key order: each entry's
`start_key` is the previous one's `end_key`, the first starts at "" and the
last ends at "" (+inf). An entry's range is the part of the key space its
file contributes (the range of its region as recorded in the copy). Keys
are hex. Per entry: the region id and epoch, the applied index and term the
copy was taken at, the file's name, size and CRC-32, and the count and
SHA-256 of its data pairs (`store_node.backup_copies.data_digest`).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from plumbing.files import sync_directory

__all__ = [
    "FORMAT",
    "MANIFEST",
    "VERSION",
    "IncompleteBackupError",
    "Manifest",
    "ManifestError",
    "RegionEntry",
    "file_crc32",
    "read_manifest",
    "write_manifest",
]

FORMAT: Final = "shardkv-backup"
VERSION: Final = 1
MANIFEST: Final = "manifest.json"
_READ_CHUNK: Final = 1 << 20
# A region file's name: no directories, nothing hidden.
_FILE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")
_U64: Final = (1 << 64) - 1


class ManifestError(Exception):
    """The manifest is missing, unreadable, or not a valid one."""


class IncompleteBackupError(ManifestError):
    """The directory has no manifest: not a backup, or one that did not
    finish."""


@dataclass(frozen=True, slots=True)
class RegionEntry:
    region_id: int
    start_key: bytes
    end_key: bytes  # b"": +inf
    conf_ver: int
    version: int
    applied_index: int
    applied_term: int
    file: str
    size: int
    crc32: int
    keys: int
    data_sha256: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.region_id,
            "start_key": self.start_key.hex(),
            "end_key": self.end_key.hex(),
            "epoch": {"conf_ver": self.conf_ver, "version": self.version},
            "applied_index": self.applied_index,
            "applied_term": self.applied_term,
            "file": self.file,
            "size": self.size,
            "crc32": self.crc32,
            "keys": self.keys,
            "data_sha256": self.data_sha256.hex(),
        }

    @classmethod
    def from_json(cls, doc: object, where: str) -> RegionEntry:
        d = _object(doc, where)
        epoch = _object(d.get("epoch"), f"{where}.epoch")
        name = _str(d, "file", where)
        if not _FILE_NAME.fullmatch(name) or name in (".", "..", MANIFEST):
            raise ManifestError(f"{where}.file: not a plain file name: {name!r}")
        digest = _hex(d, "data_sha256", where)
        if len(digest) != 32:
            raise ManifestError(f"{where}.data_sha256: not a SHA-256")
        return cls(
            region_id=_int(d, "id", where, low=1),
            start_key=_hex(d, "start_key", where),
            end_key=_hex(d, "end_key", where),
            conf_ver=_int(epoch, "conf_ver", f"{where}.epoch"),
            version=_int(epoch, "version", f"{where}.epoch"),
            applied_index=_int(d, "applied_index", where),
            applied_term=_int(d, "applied_term", where),
            file=name,
            size=_int(d, "size", where),
            crc32=_int(d, "crc32", where, high=0xFFFFFFFF),
            keys=_int(d, "keys", where),
            data_sha256=digest,
        )


@dataclass(frozen=True, slots=True)
class Manifest:
    cluster_id: int
    started_at: str  # ISO 8601, UTC
    finished_at: str
    regions: tuple[RegionEntry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(r.size for r in self.regions)

    @property
    def total_keys(self) -> int:
        return sum(r.keys for r in self.regions)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "cluster_id": self.cluster_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "total_keys": self.total_keys,
            "total_bytes": self.total_bytes,
            "regions": [r.to_json() for r in self.regions],
        }

    @classmethod
    def from_json(cls, doc: object) -> Manifest:
        """The manifest of `doc` (a parsed manifest.json), checked: its
        format and version, every field, and that its regions tile the key
        space. ManifestError says what is wrong."""
        d = _object(doc, "manifest")
        if d.get("format") != FORMAT:
            raise ManifestError(f"not a shardkv backup manifest (format {d.get('format')!r})")
        version = d.get("version")
        if version != VERSION:
            raise ManifestError(
                f"backup format version {version!r}; this shardkv reads version {VERSION}"
            )
        raw_regions = d.get("regions")
        if not isinstance(raw_regions, list):
            raise ManifestError("manifest.regions: not a list")
        regions = tuple(
            RegionEntry.from_json(r, f"regions[{i}]") for i, r in enumerate(raw_regions)
        )
        m = cls(
            cluster_id=_int(d, "cluster_id", "manifest"),
            started_at=_str(d, "started_at", "manifest"),
            finished_at=_str(d, "finished_at", "manifest"),
            regions=regions,
        )
        m.check_tiling()
        return m

    def check_tiling(self) -> None:
        """ManifestError unless the regions cover the key space once, in
        order, with distinct files."""
        if not self.regions:
            raise ManifestError("the manifest lists no region")
        expected = b""
        for i, r in enumerate(self.regions):
            if r.start_key != expected:
                raise ManifestError(
                    f"regions[{i}] starts at {r.start_key.hex() or '(start)'}, expected "
                    f"{expected.hex() or '(start)'}: the ranges do not tile the key space"
                )
            if r.end_key and r.end_key <= r.start_key:
                raise ManifestError(f"regions[{i}]: end key not above its start key")
            if not r.end_key and i != len(self.regions) - 1:
                raise ManifestError(f"regions[{i}] ends the key space but is not the last")
            expected = r.end_key
        if expected:
            raise ManifestError(f"the last region ends at {expected.hex()}, not at the end")
        if len({r.file for r in self.regions}) != len(self.regions):
            raise ManifestError("two regions name the same file")


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write `manifest.json` atomically and durably (what makes the
    directory a complete backup); returns its path."""
    path = directory / MANIFEST
    tmp = directory / f".{MANIFEST}.tmp"
    data = json.dumps(manifest.to_json(), indent=1).encode() + b"\n"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    sync_directory(directory)
    return path


def read_manifest(directory: Path) -> tuple[Manifest, bytes]:
    """The checked manifest of a backup directory and its raw bytes."""
    path = directory / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if not directory.is_dir():
            raise ManifestError(f"{directory}: no such directory") from None
        raise IncompleteBackupError(
            f"{directory} has no {MANIFEST}: not a backup, or one that did not finish "
            "(the manifest is written last)"
        ) from None
    except OSError as e:
        raise ManifestError(f"{path}: {e.strerror}") from None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ManifestError(f"{path}: not JSON ({e})") from None
    return Manifest.from_json(doc), raw


def file_crc32(path: Path) -> tuple[int, int]:
    """(size, CRC-32) of a file."""
    crc = 0
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


# -- field checks ----------------------------------------------------------------


def _object(doc: object, where: str) -> Mapping[str, object]:
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: not an object")
    return doc


def _int(d: Mapping[str, object], name: str, where: str, *, low: int = 0, high: int = _U64) -> int:
    v = d.get(name)
    if type(v) is not int or not low <= v <= high:
        raise ManifestError(f"{where}.{name}: expected an integer in [{low}, {high}], got {v!r}")
    return v


def _str(d: Mapping[str, object], name: str, where: str) -> str:
    v = d.get(name)
    if not isinstance(v, str):
        raise ManifestError(f"{where}.{name}: expected a string, got {v!r}")
    return v


def _hex(d: Mapping[str, object], name: str, where: str) -> bytes:
    v = _str(d, name, where)
    if not _HEX.fullmatch(v):
        raise ManifestError(f"{where}.{name}: not lowercase hex: {v!r}")
    return bytes.fromhex(v)
