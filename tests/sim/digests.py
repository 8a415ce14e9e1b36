"""Digests of a region's copy, for the simulation's checks: a store's
(`region_digest`, values as the user sees them) and a snapshot file's."""

from __future__ import annotations

import zlib
from pathlib import Path

from kvproto.metapb import Region
from store_node import keys
from store_node.engine import Engine, scan_cursor
from store_node.snapshot import read_records


def snapshot_file_digest(path: Path, region_id: int) -> int:
    """`region_digest` of the copy a whole snapshot file holds."""
    crc = 0
    for is_session, k, v in read_records(path):
        key = keys.session_prefix(region_id) + k if is_session else k
        crc = zlib.crc32(key + b"=" + v, crc)
    return crc


def region_digest(engine: Engine, region: Region) -> int:
    """CRC of a region's data and client sessions on one store."""
    crc = 0
    with engine.read_kv() as txn:
        # Values, not how each store keeps them (blob pointers differ).
        for k, v in engine.scan_data(txn, region.start_key, region.end_key):
            crc = zlib.crc32(bytes(k) + b"=" + bytes(v), crc)
        for k, v in scan_cursor(
            txn,
            engine.kv_db(keys.SESSION_DB),
            keys.session_prefix(region.id),
            keys.session_prefix(region.id + 1),
        ):
            crc = zlib.crc32(bytes(k) + b"=" + bytes(v), crc)
    return crc
