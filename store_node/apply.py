"""Applying committed entries to `kv/`: the state machine of every region.

Runs inside one `kv/` write transaction for all regions of a round (in the
store's worker thread). It reads nothing but the transaction and its task,
and returns what happened as values, so that it can be re-run from scratch
when LMDB asks for a bigger map, and tested without a store.

A consistency check (`ComputeHashRequest`) ends a task early: the region's
copy must be read as of that entry, so the transaction commits there, the
shell pins a read of it, and the rest of the task applies in a transaction
of its own (`store_node.region_hash.finish_checks`).

Every command is checked again here against the region *as of this entry*
(a split or conf change applied earlier in the log may have changed it since
the command was proposed): a mismatch is `EpochNotMatch` and nothing of the
command is written. Data and the applied index land in the same transaction.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvproto import codec, epoch
from kvproto.codec import DecodeError
from kvproto.errorpb import EpochNotMatch, KeyNotInRegion, RegionError, RegionNotFound
from kvproto.metapb import Region
from kvproto.raft_cmdpb import (
    BatchSplitRequest,
    ChangePeerRequest,
    ClientWrite,
    CompactLogRequest,
    CompareAndSet,
    ComputeHashRequest,
    Delete,
    DeleteRange,
    Put,
    RaftCmdRequest,
    VerifyHashRequest,
    WriteCommand,
    WriteOp,
    WriteOutcome,
    WriteResult,
)
from kvproto.raft_serverpb import PeerState, RegionLocalState
from plumbing.logs import log_fields
from raft.errors import ConfChangeError
from raft.types import ConfChange, Entry, EntryType
from store_node import keys, membership, sessions, split
from store_node.engine import KvTxn
from store_node.peer_storage import RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_TERM
from store_node.records import ApplyState, encode_apply_state

if TYPE_CHECKING:
    from store_node.region_hash import HashJob

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ApplyTask:
    """Committed entries of one region, with the region state they start from."""

    region: Region
    apply_state: ApplyState
    entries: tuple[Entry, ...]
    # Regions a split must not (re)create here: they already have an
    # initialized peer on this store, or a tombstone.
    skip_regions: frozenset[int] = frozenset()


@dataclass(slots=True)
class EntryResult:
    index: int
    term: int
    # One outcome per client write of a WriteCommand, in order.
    writes: tuple[WriteOutcome, ...] = ()
    region_error: RegionError | None = None
    # A conf change the Raft node must now apply (same change, same order).
    conf_change: ConfChange | None = None
    # An admin command's resulting regions (a split: original first).
    regions: tuple[Region, ...] = ()
    # Bytes (key + value) and keys of its client writes applied, puts and
    # deletes alike (TiKV's written flow); a delete range counts nothing
    # (its key count is unknown without a scan). Per entry, so that only
    # the leader of its term counts it (`StoreCore._absorb`).
    written_bytes: int = 0
    written_keys: int = 0
    # A consistency check's command (`store_node.consistency`).
    hash_check: ComputeHashRequest | VerifyHashRequest | None = None


@dataclass(slots=True)
class ApplyOutcome:
    region: Region
    apply_state: ApplyState
    entries: list[EntryResult] = field(default_factory=list)
    region_changed: bool = False
    # Approximate bytes and keys added (for size-based split checks).
    size_hint_bytes: int = 0
    size_hint_keys: int = 0
    # Regions created by splits applied in this task, in order.
    new_regions: list[Region] = field(default_factory=list)
    # The task stopped right after a ComputeHash entry (its check id): the
    # entries after it are `rest` (`store_node.region_hash.finish_checks`).
    hash_check: int | None = None
    rest: tuple[Entry, ...] = ()
    # The region's copy pinned at each ComputeHash applied, to be hashed.
    hash_jobs: list[HashJob] = field(default_factory=list)


def region_state_bytes(region: Region, state: PeerState = PeerState.NORMAL) -> bytes:
    return codec.dumps(RegionLocalState(region=region, state=state))


def write_region_state(txn: KvTxn, region: Region, state: PeerState = PeerState.NORMAL) -> None:
    txn.put(keys.REGION_DB, keys.region_key(region.id), region_state_bytes(region, state))


def write_apply_state(txn: KvTxn, region_id: int, a: ApplyState) -> None:
    txn.put(keys.APPLY_DB, keys.region_key(region_id), encode_apply_state(a))


def apply_round(txn: KvTxn, tasks: list[ApplyTask]) -> list[ApplyOutcome]:
    return [apply_task(txn, t) for t in tasks]


def apply_task(txn: KvTxn, task: ApplyTask) -> ApplyOutcome:
    out = ApplyOutcome(region=task.region, apply_state=task.apply_state)
    for i, e in enumerate(task.entries):
        if e.index <= out.apply_state.applied_index:
            raise AssertionError(
                f"region {task.region.id}: entry {e.index} already applied "
                f"(applied {out.apply_state.applied_index})"
            )
        if e.type == EntryType.CONF_CHANGE:
            res = _apply_conf_change(txn, out, e)
        elif not e.data:
            res = EntryResult(e.index, e.term)  # a new leader's empty entry
        else:
            res = _apply_command(txn, out, e, task.skip_regions)
        out.entries.append(res)
        out.apply_state = dataclasses.replace(
            out.apply_state, applied_index=e.index, applied_term=e.term
        )
        if isinstance(res.hash_check, ComputeHashRequest):
            out.hash_check = res.hash_check.check_id
            out.rest = task.entries[i + 1 :]
            break
    if out.region_changed:
        write_region_state(txn, out.region)
    write_apply_state(txn, out.region.id, out.apply_state)
    return out


def _decode_command(e: Entry, region_id: int) -> RaftCmdRequest | WriteCommand | None:
    try:
        cmd = codec.loads(e.data)
    except DecodeError as err:
        # Every replica decodes the same bytes the same way, so skipping is
        # deterministic; but it means a proposer wrote garbage: loud log.
        log.error("region %d: undecodable command at index %d: %s", region_id, e.index, err)
        return None
    if not isinstance(cmd, RaftCmdRequest | WriteCommand):
        log.error("region %d: %s is no command (index %d)", region_id, type(cmd).__name__, e.index)
        return None
    return cmd


def _apply_command(
    txn: KvTxn, out: ApplyOutcome, e: Entry, skip_regions: frozenset[int]
) -> EntryResult:
    region = out.region
    cmd = _decode_command(e, region.id)
    if cmd is None:
        return EntryResult(e.index, e.term, region_error=RegionNotFound(region.id))
    if cmd.header.region_id != region.id:
        return EntryResult(e.index, e.term, region_error=RegionNotFound(cmd.header.region_id))
    if isinstance(cmd, WriteCommand):
        if not epoch.check_request_epoch(cmd.header.region_epoch, region, None):
            return EntryResult(e.index, e.term, region_error=EpochNotMatch((region,)))
        return _apply_writes(txn, out, e, cmd)
    admin_type = _admin_type(cmd)
    if not epoch.check_request_epoch(cmd.header.region_epoch, region, admin_type):
        return EntryResult(e.index, e.term, region_error=EpochNotMatch((region,)))
    if isinstance(cmd.admin, BatchSplitRequest):
        return _apply_split(txn, out, e, cmd.admin, skip_regions)
    if isinstance(cmd.admin, ComputeHashRequest | VerifyHashRequest):
        return EntryResult(e.index, e.term, hash_check=cmd.admin)
    if cmd.admin is not None:
        # Log compaction is decided locally by each peer; a CompactLog
        # command from a newer store version is a no-op here.
        return EntryResult(e.index, e.term)
    # Plain ops without a session (written by earlier versions).
    legacy = WriteCommand(cmd.header, 0, 0, (ClientWrite(None, cmd.requests),))
    return _apply_writes(txn, out, e, legacy)


def _apply_writes(txn: KvTxn, out: ApplyOutcome, e: Entry, cmd: WriteCommand) -> EntryResult:
    """Each client write of the command, at most once per session."""
    region = out.region
    for w in cmd.writes:
        bad = _key_outside(region, w.ops)
        if bad is not None:
            return EntryResult(e.index, e.term, region_error=bad)
    res = EntryResult(e.index, e.term)
    table: sessions.RegionSessions | None = None
    outcomes: list[WriteOutcome] = []
    for w in cmd.writes:
        if w.session is None:
            outcomes.append(tuple(_apply_op(txn, region, op, out, res) for op in w.ops))
            continue
        if table is None:
            table = sessions.RegionSessions(txn, region.id)
            table.tick(cmd.time_ms, cmd.session_ttl_ms)
        decision = table.check(w.session)
        if isinstance(decision, sessions.Stored):
            outcomes.append(decision.results)
        elif isinstance(decision, sessions.Expired):
            outcomes.append(sessions.EXPIRED)
        else:
            results = tuple(_apply_op(txn, region, op, out, res) for op in w.ops)
            table.record(w.session, results)
            outcomes.append(results)
    res.writes = tuple(outcomes)
    return res


def _apply_split(
    txn: KvTxn,
    out: ApplyOutcome,
    e: Entry,
    req: BatchSplitRequest,
    skip_regions: frozenset[int],
) -> EntryResult:
    region = out.region
    try:
        regions = split.split_regions(region, req)
    except split.SplitError as err:
        # Every replica refuses it alike (same region, same request).
        log.warning("region %d: split at %d refused: %s", region.id, e.index, err)
        return EntryResult(e.index, e.term, region_error=EpochNotMatch((region,)))
    out.region = regions[0]
    out.region_changed = True
    init = ApplyState(
        RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_TERM, RAFT_INIT_LOG_TERM
    )
    for r in regions[1:]:
        if r.id in skip_regions:
            continue
        write_region_state(txn, r)
        write_apply_state(txn, r.id, init)
        # A retry of a write applied before the split may go to either part.
        sessions.copy_region(txn, region.id, r.id)
        out.new_regions.append(r)
    log.info(
        "region %d: split at %d into %s",
        region.id,
        e.index,
        ", ".join(f"{r.id}[{r.start_key!r}, {r.end_key!r})" for r in regions),
        extra=log_fields(region=region.id),
    )
    return EntryResult(e.index, e.term, regions=tuple(regions))


def _admin_type(cmd: RaftCmdRequest) -> epoch.AdminCmdType | None:
    if cmd.admin is None:
        return None
    if isinstance(cmd.admin, ChangePeerRequest):
        return epoch.AdminCmdType.CHANGE_PEER
    if isinstance(cmd.admin, BatchSplitRequest):
        return epoch.AdminCmdType.BATCH_SPLIT
    if isinstance(cmd.admin, CompactLogRequest):
        return epoch.AdminCmdType.COMPACT_LOG
    if isinstance(cmd.admin, ComputeHashRequest):
        return epoch.AdminCmdType.COMPUTE_HASH
    if isinstance(cmd.admin, VerifyHashRequest):
        return epoch.AdminCmdType.VERIFY_HASH
    raise AssertionError(f"unknown admin request {cmd.admin!r}")


def range_inside(region: Region, start: bytes, end: bytes) -> bool:
    """Whether [start, end) (empty end: +infinity) lies within the region."""
    if start < region.start_key:
        return False
    if not region.end_key:
        return True
    return bool(end) and end <= region.end_key


def _key_outside(region: Region, ops: tuple[WriteOp, ...]) -> RegionError | None:
    for op in ops:
        if isinstance(op, DeleteRange):
            key = op.start_key
            inside = range_inside(region, op.start_key, op.end_key)
        else:
            key = op.key
            inside = region.contains(op.key)
        if not inside:
            return KeyNotInRegion(key, region.id, region.start_key, region.end_key)
    return None


def _apply_op(
    txn: KvTxn, region: Region, op: WriteOp, out: ApplyOutcome, res: EntryResult
) -> WriteResult:
    if isinstance(op, Put):
        txn.put(keys.DATA_DB, op.key, op.value)
        size = len(op.key) + len(op.value)
        out.size_hint_bytes += size
        out.size_hint_keys += 1
        res.written_bytes += size
        res.written_keys += 1
        return WriteResult()
    if isinstance(op, Delete):
        txn.delete(keys.DATA_DB, op.key)
        res.written_bytes += len(op.key)
        res.written_keys += 1
        return WriteResult()
    if isinstance(op, DeleteRange):
        txn.delete_range(keys.DATA_DB, op.start_key, op.end_key)
        return WriteResult()
    if isinstance(op, CompareAndSet):
        previous = txn.get(keys.DATA_DB, op.key)
        if previous != op.expected:
            return WriteResult(succeeded=False, previous=previous)
        if op.new_value is None:
            txn.delete(keys.DATA_DB, op.key)
            res.written_bytes += len(op.key)
        else:
            txn.put(keys.DATA_DB, op.key, op.new_value)
            size = len(op.key) + len(op.new_value)
            out.size_hint_bytes += size
            out.size_hint_keys += 1
            res.written_bytes += size
        res.written_keys += 1
        return WriteResult(succeeded=True, previous=previous)
    raise AssertionError(f"unknown write op {op!r}")


def _apply_conf_change(txn: KvTxn, out: ApplyOutcome, e: Entry) -> EntryResult:
    region = out.region
    try:
        cc = ConfChange.decode(e.data)
    except ValueError as err:
        log.error("region %d: undecodable conf change at %d: %s", region.id, e.index, err)
        return EntryResult(e.index, e.term, region_error=RegionNotFound(region.id))
    req: ChangePeerRequest | None = None
    if not cc.leaves_joint:
        cmd = _decode_command(Entry(e.term, e.index, data=cc.context), region.id)
        if not isinstance(cmd, RaftCmdRequest) or not isinstance(cmd.admin, ChangePeerRequest):
            return EntryResult(e.index, e.term, region_error=RegionNotFound(region.id))
        if not epoch.check_request_epoch(
            cmd.header.region_epoch, region, epoch.AdminCmdType.CHANGE_PEER
        ):
            return EntryResult(e.index, e.term, region_error=EpochNotMatch((region,)))
        req = cmd.admin
    try:
        changed = membership.apply_to_region(region, cc, req)
    except ConfChangeError as err:
        # Every replica refuses it alike; the Raft node is not told either.
        log.warning("region %d: conf change at %d refused: %s", region.id, e.index, err)
        return EntryResult(e.index, e.term, region_error=EpochNotMatch((region,)))
    out.region = changed.with_epoch(epoch.bumped(region.epoch, epoch.AdminCmdType.CHANGE_PEER))
    out.region_changed = True
    log.info(
        "region %d: conf change applied at %d: %s -> peers %s",
        region.id,
        e.index,
        "leave joint" if req is None else ", ".join(map(membership.describe_change, req.changes)),
        [(p.id, p.store_id, p.role.name) for p in out.region.peers],
        extra=log_fields(region=region.id),
    )
    return EntryResult(e.index, e.term, conf_change=cc)
