"""A store's persisted identity and regions: first start, restart, bootstrap."""

from __future__ import annotations

import logging

from kvproto import codec
from kvproto.codec import DecodeError
from kvproto.metapb import Region
from kvproto.raft_serverpb import PeerState, RegionLocalState, StoreIdent
from raft.types import HardState
from store_node import keys
from store_node.apply import region_state_bytes
from store_node.engine import Engine, WriteBatch, scan_cursor
from store_node.peer_storage import RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_TERM
from store_node.records import (
    ApplyState,
    CorruptRecordError,
    decode_apply_state,
    decode_hard_state,
    encode_apply_state,
    encode_hard_state,
)

log = logging.getLogger(__name__)


class DataDirMismatchError(Exception):
    """The data directory belongs to another cluster or another store."""


def read_store_ident(engine: Engine) -> StoreIdent | None:
    raw = engine.kv_get(keys.META_DB, keys.STORE_IDENT_KEY)
    if raw is None:
        return None
    try:
        return codec.loads(raw, StoreIdent)
    except DecodeError as e:
        raise CorruptRecordError(f"store ident: {e}") from e


def write_store_ident(engine: Engine, ident: StoreIdent) -> None:
    batch = WriteBatch()
    batch.put(keys.META_DB, keys.STORE_IDENT_KEY, codec.dumps(ident))
    engine.write_kv_batch(batch)
    engine.sync_kv()


def check_store_ident(ident: StoreIdent, cluster_id: int) -> None:
    if ident.cluster_id != cluster_id:
        raise DataDirMismatchError(
            f"the data directory belongs to cluster {ident.cluster_id} (store "
            f"{ident.store_id}), but the PD runs cluster {cluster_id}; use another "
            "--data-dir or point --pd at that cluster's PD"
        )


def write_initial_region(engine: Engine, region: Region) -> None:
    """Persist a region created from nothing (bootstrap, or later a split):
    its log starts at RAFT_INIT_LOG_INDEX, implied by the kv state."""
    apply_state = ApplyState(
        RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_TERM, RAFT_INIT_LOG_TERM
    )
    kv = WriteBatch()
    kv.put(keys.REGION_DB, keys.region_key(region.id), region_state_bytes(region))
    kv.put(keys.APPLY_DB, keys.region_key(region.id), encode_apply_state(apply_state))
    engine.write_kv_batch(kv)
    engine.sync_kv()
    rb = WriteBatch()
    rb.put(
        keys.STATE_DB,
        keys.region_key(region.id),
        encode_hard_state(HardState(term=RAFT_INIT_LOG_TERM, vote=0, commit=RAFT_INIT_LOG_INDEX)),
    )
    engine.write_raft(rb)


def load_store(engine: Engine) -> tuple[list[Region], list[tuple[Region, ApplyState]]]:
    """What a restarting store resumes from: the tombstones and the live
    regions (with their apply states), once the raft/ leftovers of destroyed
    peers are gone (see `clean_destroyed`)."""
    tombstones = load_tombstones(engine)
    clean_destroyed(engine, tombstones)
    return tombstones, load_regions(engine)


def destroyed_hard_state(hs: HardState) -> HardState:
    """What a destroyed peer leaves of its hard state: its term and vote, so
    that a later peer of the region on this store never votes twice in a
    term, but no commit index (there is no log any more for it to point
    into)."""
    return HardState(term=hs.term, vote=hs.vote, commit=0)


def clean_destroyed(engine: Engine, tombstones: list[Region]) -> int:
    """Finish destroys a crash interrupted: the kv/ tombstone is made durable
    before the raft/ deletions, so after a crash in between, a tombstoned
    region may still have log entries and a commit index here. A new peer of
    the region would read them as its own. Returns the regions cleaned."""
    batch = WriteBatch()
    cleaned = 0
    for region in tombstones:
        prefix = keys.raft_log_prefix(region.id)
        end = keys.raft_log_prefix(region.id + 1)
        with engine.read_raft() as txn:
            first = next(scan_cursor(txn, engine.raft_db(keys.LOG_DB), prefix, end), None)
        has_log = first is not None
        raw = engine.raft_get(keys.STATE_DB, keys.region_key(region.id))
        hs = decode_hard_state(raw) if raw is not None else None
        if not has_log and (hs is None or hs.commit == 0):
            continue
        cleaned += 1
        batch.delete_range(keys.LOG_DB, prefix, end)
        if hs is not None:
            batch.put(
                keys.STATE_DB,
                keys.region_key(region.id),
                encode_hard_state(destroyed_hard_state(hs)),
            )
    if batch.ops:
        log.info("cleaned the raft state of %d destroyed peers (destroys interrupted)", cleaned)
        engine.write_raft(batch, must_sync=True)
    return cleaned


def _region_states(engine: Engine) -> list[tuple[bytes, RegionLocalState]]:
    """Every region record of this store (key, state), in id order."""
    out = []
    for k, v in engine.kv_items(keys.REGION_DB):
        try:
            out.append((k, codec.loads(v, RegionLocalState)))
        except DecodeError as e:
            raise CorruptRecordError(f"region state {keys.region_id_of(k)}: {e}") from e
    return out


def load_tombstones(engine: Engine) -> list[Region]:
    """Regions whose peer on this store was destroyed."""
    return [s.region for _, s in _region_states(engine) if s.state == PeerState.TOMBSTONE]


def load_regions(engine: Engine) -> list[tuple[Region, ApplyState]]:
    """Every live region of this store with its apply state, in id order."""
    out: list[tuple[Region, ApplyState]] = []
    for k, state in _region_states(engine):
        if state.state == PeerState.TOMBSTONE:
            continue
        raw = engine.kv_get(keys.APPLY_DB, k)
        if raw is None:
            raise CorruptRecordError(f"region {state.region.id} has no apply state")
        out.append((state.region, decode_apply_state(raw)))
    return out
