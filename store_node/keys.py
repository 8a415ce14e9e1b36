"""Every on-disk key of a store, built by named functions in one place.

Layout (see DESIGN.md):

    kv/    db "data"    user key                      -> value
           db "region"  region_id (8B BE)             -> RegionLocalState
           db "apply"   region_id (8B BE)             -> ApplyState
           db "meta"    STORE_IDENT_KEY               -> StoreIdent
                        REPLACED_STORE_KEY            -> store id (8B BE) this store
                                                         replaced (its data was lost)
                        PREPARE_REPLACE_KEY           -> new id + replaced id (8B BE
                                                         each): a replacement begun
           db "session" region_id + 0x00              -> SessionMeta
                        region_id + 0x01 + session    -> SessionRecord
                        region_id + 0x02 + session + seq (8B BE) -> SessionAnswer
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
SESSION_DB = b"session"
LOG_DB = b"log"
STATE_DB = b"state"

STORE_IDENT_KEY = b"store_ident"
REPLACED_STORE_KEY = b"replaced_store"
PREPARE_REPLACE_KEY = b"prepare_replace"

# User keys are LMDB keys (db "data"), and LMDB takes keys of at most 511
# bytes (its compiled-in MDB_MAXKEYSIZE; `Environment.max_key_size()`):
# the largest key a store accepts.
MAX_KEY_SIZE = 511

# Values longer than this go to blob files by default, in files of about
# this size (store_node.blob_files; here, beside the other layout facts, so
# the store's config reads them without importing the engine).
LARGE_VALUE_THRESHOLD = 64 << 10
BLOB_FILE_SIZE = 64 << 20


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


# Client sessions (store_node.sessions): every row of a region starts with
# its id, so a region's sessions are one key range (copied by a split,
# carried by a snapshot, deleted with the peer).
_SESSION_META = b"\x00"
_SESSION_RECORD = b"\x01"
_SESSION_ANSWER = b"\x02"


def session_prefix(region_id: int) -> bytes:
    return _U64.pack(region_id)


def session_meta_key(region_id: int) -> bytes:
    return _U64.pack(region_id) + _SESSION_META


def session_record_key(region_id: int, session_id: bytes) -> bytes:
    return _U64.pack(region_id) + _SESSION_RECORD + session_id


def session_records_prefix(region_id: int) -> bytes:
    return _U64.pack(region_id) + _SESSION_RECORD


def session_id_of(record_key: bytes) -> bytes:
    return record_key[9:]


def session_answer_key(region_id: int, session_id: bytes, seq: int) -> bytes:
    return _U64.pack(region_id) + _SESSION_ANSWER + session_id + _U64.pack(seq)
