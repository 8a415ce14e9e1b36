"""Backup copies of regions, taken by a store for `shardkv ctl backup`
(tags 80..99).

The backup tool asks a region's leader to prepare a copy
(`BackupPrepareRequest`, routed and retried like any KV request: it carries a
`Context` and is answered with a region error when the routing is wrong);
the leader makes the read linearizable, writes the region's data from one
read transaction into a file, and answers with a `BackupCopy`. The tool
then pulls the file in chunks (`BackupChunkRequest`) from the store that
answered (`BackupPrepareResponse.store_id`) and releases it
(`BackupReleaseRequest`); a copy nobody asks for is dropped after a while.

Tags are part of the wire format: never reused, never renumbered.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvproto.codec import wire
from kvproto.errorpb import RegionError
from kvproto.kvrpcpb import Context, KvError
from kvproto.metapb import Region


@wire(80)
@dataclass(frozen=True, slots=True)
class BackupPrepareRequest:
    """Copy the region of `context` (at its leader); `key`, where the
    backup's walk of the key space is, must be in it."""

    context: Context
    key: bytes


@wire(81)
@dataclass(frozen=True, slots=True)
class BackupCopy:
    """A prepared copy: the region as of `applied_index` (the copy holds
    every pair of its range at that index, from one read transaction), and
    the file's size and CRC-32 (a snapshot file, `store_node.snapshot`).
    `keys` and `data_sha256` are the count and the SHA-256 of its data pairs
    (`store_node.backup_copies.data_digest`)."""

    copy_id: int
    region: Region
    applied_index: int
    applied_term: int
    size: int
    crc32: int
    keys: int
    data_sha256: bytes


@wire(82)
@dataclass(frozen=True, slots=True)
class BackupPrepareResponse:
    region_error: RegionError | None = None
    error: KvError | None = None
    copy: BackupCopy | None = None
    # The store holding the copy: chunks are asked of it.
    store_id: int = 0


@wire(83)
@dataclass(frozen=True, slots=True)
class BackupChunkRequest:
    """Bytes [offset, offset + max_bytes) of a copy (fewer at its end, and
    at most the store's own chunk bound)."""

    copy_id: int
    offset: int
    max_bytes: int


@wire(84)
@dataclass(frozen=True, slots=True)
class BackupChunkResponse:
    """`error` is empty unless the copy is gone (released, timed out, the
    store restarted) or the offset is wrong: then the region is copied again."""

    data: bytes = b""
    error: str = ""


@wire(85)
@dataclass(frozen=True, slots=True)
class BackupReleaseRequest:
    """The tool has the copy (or gives it up): the store deletes its file."""

    copy_id: int


@wire(86)
@dataclass(frozen=True, slots=True)
class BackupReleaseResponse:
    released: bool = False  # False: it was already gone
