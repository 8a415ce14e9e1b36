"""Every on-disk key of a store, built by named functions in one place.

Layout (see DESIGN.md):

    kv/    db "data"    user key                      -> value
           db "region"  region_id (8B BE)             -> RegionLocalState
           db "apply"   region_id (8B BE)             -> ApplyState
           db "meta"    STORE_IDENT_KEY               -> StoreIdent
    raft/  db "log"     region_id (8B BE) + index (8B BE) -> entry
           db "state"   region_id (8B BE)             -> HardState

Big-endian fixed-width integers make LMDB's byte order equal numeric order,
so one region's log is one contiguous, index-ordered key range.
"""

from __future__ import annotations

import struct

_U64 = struct.Struct(">Q")
_U64_PAIR = struct.Struct(">QQ")

DATA_DB = b"data"
REGION_DB = b"region"
APPLY_DB = b"apply"
META_DB = b"meta"
LOG_DB = b"log"
STATE_DB = b"state"

STORE_IDENT_KEY = b"store_ident"


def region_key(region_id: int) -> bytes:
    """Key of a region's RegionLocalState, ApplyState or HardState."""
    return _U64.pack(region_id)


def region_id_of(key: bytes) -> int:
    return int(_U64.unpack_from(key, 0)[0])


def raft_log_key(region_id: int, index: int) -> bytes:
    return _U64_PAIR.pack(region_id, index)


def raft_log_index(key: bytes) -> int:
    return int(_U64_PAIR.unpack(key)[1])


def raft_log_prefix(region_id: int) -> bytes:
    """Every log key of `region_id` starts with this (and only its keys do)."""
    return _U64.pack(region_id)
