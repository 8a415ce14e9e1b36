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
from store_node.engine import Engine, WriteBatch
from store_node.peer_storage import RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_TERM
from store_node.records import (
    ApplyState,
    CorruptRecordError,
    decode_apply_state,
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


def load_tombstones(engine: Engine) -> list[Region]:
    """Regions whose peer on this store was destroyed."""
    out: list[Region] = []
    for k, v in engine.kv_items(keys.REGION_DB):
        try:
            state = codec.loads(v, RegionLocalState)
        except DecodeError as e:
            raise CorruptRecordError(f"region state {keys.region_id_of(k)}: {e}") from e
        if state.state == PeerState.TOMBSTONE:
            out.append(state.region)
    return out


def load_regions(engine: Engine) -> list[tuple[Region, ApplyState]]:
    """Every live region of this store with its apply state, in id order."""
    out: list[tuple[Region, ApplyState]] = []
    for k, v in engine.kv_items(keys.REGION_DB):
        try:
            state = codec.loads(v, RegionLocalState)
        except DecodeError as e:
            raise CorruptRecordError(f"region state {keys.region_id_of(k)}: {e}") from e
        if state.state == PeerState.TOMBSTONE:
            continue
        raw = engine.kv_get(keys.APPLY_DB, k)
        if raw is None:
            raise CorruptRecordError(f"region {state.region.id} has no apply state")
        out.append((state.region, decode_apply_state(raw)))
    return out
