"""Disk faults: a write that fails stops the store.

* A failed write or fsync of raft/ or kv/ is fatal: the engine raises
  `DiskFailure` and refuses every later write, and the store stops (exit
  status 3 from `shardkv store`). After a failed fsync the state of the
  page cache is unknown (PostgreSQL's "fsyncgate"): a retry that succeeds
  proves nothing, so there is none. Nothing acknowledged is lost: a client
  write is answered after its apply, which follows the durable raft/ write
  of its entry, and a follower vouches for entries only once that write is
  durable, so whatever the failed round held was promised to nobody.
* A write that runs out of space is a `DiskFailure` like any other
  ("disk full" in its message).

Failpoint (`plumbing.failpoints`): ``engine.sync`` (every write and sync of
the engine raises).
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Final

import lmdb

from plumbing import failpoints

__all__ = ["ENGINE_SYNC", "DiskFailure", "is_disk_error"]

log = logging.getLogger(__name__)

ENGINE_SYNC: Final = failpoints.declare(
    "engine.sync",
    "every write and sync of the engine (raft/ and kv/) fails: error(EIO) stops the store",
)

# LMDB errors that say a call was wrong (a key too long...), not that the
# disk failed: they are bugs and surface as such.
_NOT_DISK: Final = (
    lmdb.BadValsizeError,
    lmdb.BadDbiError,
    lmdb.BadTxnError,
    lmdb.BadRslotError,
    lmdb.InvalidParameterError,
    lmdb.KeyExistsError,
    lmdb.NotFoundError,
)
_FULL_ERRNOS: Final = (errno.ENOSPC, errno.EDQUOT)


def is_disk_error(e: BaseException) -> bool:
    """Whether `e`, raised while persisting, means the disk failed."""
    return isinstance(e, OSError | lmdb.Error) and not isinstance(e, _NOT_DISK)


def _is_full(e: BaseException) -> bool:
    return isinstance(e, lmdb.DiskError) or getattr(e, "errno", None) in _FULL_ERRNOS


class DiskFailure(Exception):
    """A write or fsync of the store's data failed: the store must stop."""

    def __init__(self, path: Path, error: BaseException) -> None:
        self.path = path
        self.error = error
        self.disk_full = _is_full(error)
        if self.disk_full:
            what, then = "disk full", "free space, then restart it"
        else:
            what, then = "disk failure", "check the disk, then restart it"
        super().__init__(
            f"{what}: writing {path} failed: {error}; the store stops and never carries on "
            f"after a failed write or fsync (nothing it acknowledged is lost: {then})"
        )
