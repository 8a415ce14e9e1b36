"""Who this store is: its store id, its cluster, and the cluster's bootstrap.

A fresh data directory gets a store id from the PD. If the cluster is not
bootstrapped yet, the store creates region 1 (the whole key space, itself as
the only peer) and bootstraps the PD with it. Several fresh stores may race:
the PD accepts one bootstrap, the others drop their region and join.

Crash safety: the first region is written locally *before* asking the PD,
with a "prepared bootstrap" marker. After a crash, the marker is resolved
against the PD: if the PD knows the region, the bootstrap happened (keep it);
if the PD was bootstrapped by someone else, drop it; else try again.

A data directory that `shardkv restore` filled (its kv/ data holds a backup,
marked `RESTORED_BACKUP_KEY`) only ever bootstraps: the first region then
holds all that data at its initial applied index. Joining a cluster instead
would leave the data outside every region, so it is refused.
"""

from __future__ import annotations

import logging

from kvproto import codec
from kvproto.epoch import INITIAL_EPOCH
from kvproto.metapb import Peer, PeerId, Region, RegionId, Store, StoreId, StoreState
from kvproto.pd_client import PdClient, PdServerError
from kvproto.pdpb import PdErrorCode
from kvproto.raft_serverpb import RegionLocalState, StoreIdent
from store_node import keys
from store_node import replace as replacing
from store_node.bootstrap import (
    DataDirMismatchError,
    check_store_ident,
    read_store_ident,
    write_initial_region,
    write_store_ident,
)
from store_node.engine import Engine, WriteBatch

log = logging.getLogger(__name__)

PREPARE_BOOTSTRAP_KEY = b"prepare_bootstrap"
# Value: the SHA-256 of the manifest of the backup `shardkv restore` loaded.
RESTORED_BACKUP_KEY = b"restored_backup"


async def ensure_identity(
    engine: Engine,
    pd: PdClient,
    address: str,
    labels: tuple[tuple[str, str], ...] = (),
    replace: int = 0,
) -> tuple[StoreIdent, list[int]]:
    """Register this store with the PD (bootstrapping the cluster if needed);
    with `replace`, a fresh store joins in the place of that store, whose
    data was lost (`store_node.replace`).

    Returns the store's identity and the ids of regions it just created.
    Raises DataDirMismatchError if the data directory is another cluster's,
    ReplaceStoreError if the replacement cannot be done, AddressTakenError
    if a fresh store's address is another store's.
    """
    ident = read_store_ident(engine)
    prepared = _read_prepared(engine)
    bootstrapped = await pd.is_bootstrapped()
    if ident is not None:
        if replace:
            replacing.check_restart(engine, ident, replace)
        if not bootstrapped:
            raise DataDirMismatchError(
                f"the data directory belongs to store {ident.store_id} of cluster "
                f"{ident.cluster_id}, but the PD has no cluster (was its data lost?)"
            )
        check_store_ident(ident, pd.cluster_id)
        known = await pd.get_store(ident.store_id)
        if known is not None and known.state == StoreState.TOMBSTONE:
            raise _removed(ident.store_id)
        try:
            await pd.put_store(Store(ident.store_id, address, StoreState.UP, labels))
        except PdServerError as e:
            # A Tombstone taken off the PD's store list is unknown to
            # GetStore above; the PD still refuses its id.
            if e.code == PdErrorCode.STORE_TOMBSTONE:
                raise _removed(ident.store_id) from None
            raise
        return ident, []

    if replace:
        _refuse_if_restored(engine, pd)
        if prepared is not None:
            raise replacing.ReplaceStoreError(
                f"--replace-store {replace} needs an empty data directory, and a bootstrap "
                "of a new cluster was begun in this one"
            )
        ident = await replacing.join_in_place(
            engine, pd, address, labels, replace, bootstrapped=bootstrapped
        )
        return ident, []
    replacing.check_no_pending(engine)
    created: list[int] = []
    if prepared is not None:
        store_id = prepared.peers[0].store_id
        if bootstrapped:
            found, _ = await pd.get_region_by_id(prepared.id)
            if found is not None:
                log.info("resuming after a crash: cluster bootstrapped with region %d", prepared.id)
                _clear_prepared(engine)
                ident = StoreIdent(pd.cluster_id, store_id)
                write_store_ident(engine, ident)
                return ident, [prepared.id]
            log.info("another store bootstrapped the cluster; dropping region %d", prepared.id)
            _drop_region(engine, prepared.id)
            _clear_prepared(engine)
        else:
            _write_prepared(engine, prepared)
            created = await _bootstrap(engine, pd, prepared, address, labels)
            ident = StoreIdent(pd.cluster_id, store_id)
            write_store_ident(engine, ident)
            return ident, created
        bootstrapped = True
    if bootstrapped:
        _refuse_if_restored(engine, pd)

    store_id = StoreId(await pd.alloc_id())
    if not bootstrapped:
        region = Region(
            RegionId(await pd.alloc_id()),
            b"",
            b"",
            INITIAL_EPOCH,
            (Peer(PeerId(await pd.alloc_id()), store_id),),
        )
        _write_prepared(engine, region)
        created = await _bootstrap(engine, pd, region, address, labels)
        if created:
            ident = StoreIdent(pd.cluster_id, store_id)
            write_store_ident(engine, ident)
            return ident, created
    try:
        await pd.put_store(Store(store_id, address, StoreState.UP, labels))
    except PdServerError as e:
        if e.code == PdErrorCode.DUPLICATE_STORE_ADDRESS:
            raise await replacing.address_taken(pd, address, e) from None
        raise
    ident = StoreIdent(pd.cluster_id, store_id)
    write_store_ident(engine, ident)
    log.info("joined cluster %d as store %d", pd.cluster_id, store_id)
    return ident, []


def _removed(store_id: int) -> DataDirMismatchError:
    return DataDirMismatchError(
        f"store {store_id} was removed from the cluster (tombstone); "
        "start with an empty --data-dir to join as a new store"
    )


async def _bootstrap(
    engine: Engine,
    pd: PdClient,
    region: Region,
    address: str,
    labels: tuple[tuple[str, str], ...],
) -> list[int]:
    store_id = region.peers[0].store_id
    try:
        await pd.bootstrap(Store(store_id, address, StoreState.UP, labels), region)
    except PdServerError as e:
        if e.code != PdErrorCode.ALREADY_BOOTSTRAPPED:
            raise
        _drop_region(engine, region.id)
        _clear_prepared(engine)
        _refuse_if_restored(engine, pd)
        log.info("another store bootstrapped the cluster first; joining it")
        await pd.is_bootstrapped()  # learn the cluster id
        return []
    _clear_prepared(engine)
    log.info(
        "bootstrapped cluster %d with region %d on store %d", pd.cluster_id, region.id, store_id
    )
    return [region.id]


def read_restored(engine: Engine) -> bytes | None:
    """The id of the backup restored into this data directory, if any."""
    return engine.kv_get(keys.META_DB, RESTORED_BACKUP_KEY)


def _refuse_if_restored(engine: Engine, pd: PdClient) -> None:
    if read_restored(engine) is not None:
        raise DataDirMismatchError(
            "the data directory holds a restored backup (shardkv restore), which can only "
            "bootstrap a new cluster: it cannot join the cluster of the PD at "
            f"{','.join(pd.addresses)}, or replace one of its stores; give --pd a new PD"
        )


def _read_prepared(engine: Engine) -> Region | None:
    raw = engine.kv_get(keys.META_DB, PREPARE_BOOTSTRAP_KEY)
    return None if raw is None else codec.loads(raw, RegionLocalState).region


def _write_prepared(engine: Engine, region: Region) -> None:
    """Marker first, then the region (both idempotent): a crash in between
    leaves a marker whose retry writes the region again."""
    batch = WriteBatch()
    batch.put(keys.META_DB, PREPARE_BOOTSTRAP_KEY, codec.dumps(RegionLocalState(region)))
    engine.write_kv_batch(batch)
    engine.sync_kv()
    write_initial_region(engine, region)


def _clear_prepared(engine: Engine) -> None:
    batch = WriteBatch()
    batch.delete(keys.META_DB, PREPARE_BOOTSTRAP_KEY)
    engine.write_kv_batch(batch)
    engine.sync_kv()


def _drop_region(engine: Engine, region_id: int) -> None:
    kv = WriteBatch()
    kv.delete(keys.REGION_DB, keys.region_key(region_id))
    kv.delete(keys.APPLY_DB, keys.region_key(region_id))
    engine.write_kv_batch(kv)
    engine.sync_kv()
    rb = WriteBatch()
    rb.delete(keys.STATE_DB, keys.region_key(region_id))
    engine.write_raft(rb)


__all__ = ["DataDirMismatchError", "ensure_identity"]
