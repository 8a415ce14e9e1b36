"""Disk faults: a write that fails stops the store; a disk that fills up
refuses client writes while everything else goes on.

* A failed write or fsync of raft/ or kv/ is fatal: the engine raises
  `DiskFailure` and refuses every later write, and the store stops (exit
  status 3 from `shardkv store`). After a failed fsync the state of the
  page cache is unknown (PostgreSQL's "fsyncgate"): a retry that succeeds
  proves nothing, so there is none. Nothing acknowledged is lost: a client
  write is answered after its apply, which follows the durable raft/ write
  of its entry, and a follower vouches for entries only once that write is
  durable, so whatever the failed round held was promised to nobody.
* The store keeps a reserve of free space (`min_free_disk`, TiKV's
  reserve-space): `DiskMonitor` samples the free space of the data (and
  Raft) directory every second; below the reserve the store is *disk full*
  and refuses client writes before proposing them (`DiskFull`, admission),
  while reads, Raft traffic from leaders (which the reserve is for), log
  truncation, splits and PD orders go on. It leaves that state once the
  free space is 10 % above the reserve. A write that runs out of space all
  the same is a `DiskFailure` like any other ("disk full" in its message).

Failpoints (`plumbing.failpoints`): ``engine.sync`` (every write and sync
of the engine raises) and ``disk.free`` (the free bytes the monitor sees).
"""

from __future__ import annotations

import errno
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import lmdb
import trio

from kvproto.errorpb import DiskFull
from plumbing import failpoints
from plumbing.units import parse_size

__all__ = [
    "DISK_FREE",
    "ENGINE_SYNC",
    "DiskFailure",
    "DiskMonitor",
    "DiskSpace",
    "UsageProbe",
    "is_disk_error",
]

log = logging.getLogger(__name__)

ENGINE_SYNC: Final = failpoints.declare(
    "engine.sync",
    "every write and sync of the engine (raft/ and kv/) fails: error(EIO) stops the store",
)
DISK_FREE: Final = failpoints.declare(
    "disk.free",
    "the free bytes the disk check sees: return(SIZE), e.g. 0 makes the store disk full",
    kinds={failpoints.Kind.RETURN},
    check=parse_size,
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
# The monitor leaves the disk-full state once this much above the reserve
# (so that a disk hovering at the line does not flap).
LEAVE_FACTOR: Final = 1.1


def human_size(n: int) -> str:
    """Bytes for people: "256MiB", "281.6MiB", "75.7GiB", "512B"."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + unit
    return f"{n}B"


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


@dataclass(frozen=True, slots=True)
class DiskSpace:
    total: int
    free: int


class Usage(Protocol):
    @property
    def total(self) -> int: ...

    @property
    def free(self) -> int: ...


class UsageProbe(Protocol):
    """`shutil.disk_usage`, or a fake."""

    def __call__(self, path: str, /) -> Usage: ...


class DiskMonitor:
    """The store's disk-full state, from a sample of the free space of
    `paths` (the tightest one counts; None: no such directory) every
    `interval` seconds.

    `blocking`: the probe may block (a real file system: run it in a
    thread, so that a hanging disk does not stall the loop)."""

    def __init__(
        self,
        paths: Sequence[str | Path | None],
        min_free: int,
        *,
        probe: UsageProbe = shutil.disk_usage,
        interval: float = 1.0,
        blocking: bool = True,
    ) -> None:
        self.paths = tuple(dict.fromkeys(str(p) for p in paths if p))
        self.min_free = min_free
        self.probe = probe
        self.interval = interval
        self.blocking = blocking
        self.full = False
        self.space: DiskSpace | None = None  # the last sample
        self._failing = False
        self._begun = self._done = 0
        self._wake = trio.Event()
        self._sampled = trio.Event()

    @property
    def refusal(self) -> DiskFull | None:
        """What client writes get while the disk is full (None: accepted)."""
        if not self.full or self.space is None:
            return None
        return DiskFull(
            f"{human_size(self.space.free)} free, below the reserve of {human_size(self.min_free)}"
        )

    def state(self) -> dict[str, Any]:
        """For the status page."""
        space = self.space
        return {
            "full": self.full,
            "free": None if space is None else space.free,
            "total": None if space is None else space.total,
            "min_free": self.min_free,
        }

    def sample(self) -> DiskSpace:
        """The free space now (blocking; the ``disk.free`` failpoint
        overrides it)."""
        tightest: DiskSpace | None = None
        for path in self.paths:
            usage = self.probe(path)
            if tightest is None or usage.free < tightest.free:
                tightest = DiskSpace(usage.total, usage.free)
        assert tightest is not None, "no path to watch"
        if failpoints.registry.active:
            forced = failpoints.value(DISK_FREE)
            if forced is not None:
                tightest = DiskSpace(tightest.total, parse_size(forced))
        return tightest

    def observe(self, space: DiskSpace) -> None:
        """Take a sample: enter or leave the disk-full state."""
        self.space = space
        where = ", ".join(self.paths)
        if not self.full and space.free < self.min_free:
            self.full = True
            log.warning(
                "disk full: %s free in %s, below the reserve of %s (min_free_disk): client "
                "writes are refused until %s are free; reads and replication go on",
                human_size(space.free),
                where,
                human_size(self.min_free),
                human_size(self._leave_at()),
            )
        elif self.full and space.free >= self._leave_at():
            self.full = False
            log.info(
                "disk space is back: %s free in %s: client writes are accepted again",
                human_size(space.free),
                where,
            )

    def _leave_at(self) -> int:
        return int(self.min_free * LEAVE_FACTOR)

    def wake(self) -> None:
        """Sample now rather than at the next interval."""
        self._wake.set()

    async def refresh(self) -> None:
        """Sample now and return once the sample is taken into account."""
        target = self._begun + 1
        self.wake()
        while self._done < target:
            await self._sampled.wait()

    async def run(self) -> None:
        while True:
            self._begun += 1
            await self._check()
            self._done += 1
            self._sampled.set()
            self._sampled = trio.Event()
            with trio.move_on_after(self.interval):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _check(self) -> None:
        try:
            if self.blocking:
                space = await trio.to_thread.run_sync(self.sample, abandon_on_cancel=True)
            else:
                space = self.sample()
        except (OSError, ValueError) as e:
            # The state stays as it was: a disk whose statvfs fails will
            # fail the next write too, and that stops the store.
            if not self._failing:
                log.warning("cannot measure the free space of %s: %s", ", ".join(self.paths), e)
            self._failing = True
            return
        self._failing = False
        self.observe(space)
