"""Joining in the place of a store whose data was lost (`shardkv store
--replace-store ID`), and saying so when a fresh store finds its address
taken.

A store started on an empty data directory is a new store: the PD refuses
it at an address another store still holds (DUPLICATE_STORE_ADDRESS), as
after a lost disk, where the old store is still registered there and its
regions still count its peers. `AddressTakenError` says which store holds
the address and how to replace it.

With `--replace-store N` the operator names the store whose data was lost
(naming it, not guessing it from the address, keeps a typo or a wrong
machine from replacing a healthy store). The store then:

1. checks that its data directory holds nothing: no identity, region, data
   or log (a replacement begun here before a crash is resumed instead);
2. takes a new id from the PD and records the intent (store id and N,
   synced) before asking, so that a crash after the PD accepted resumes
   with the same id rather than leaving a registered store nobody runs;
3. asks the PD to replace N (`ReplaceStore`): the PD refuses while N may be
   alive (heard from within `store_disconnect_time`) or if N is at another
   address; else it makes N a Tombstone (its peers are then re-created by
   the replica checker, on this store too) and registers this one;
4. writes its identity and the id it replaced (kept: `replaced_store`),
   dropping the intent, in one synced kv/ transaction.

Every refusal is a `ReplaceStoreError` and changes nothing at the PD.
Started again with the same flag once replaced, the store just runs.
"""

from __future__ import annotations

import logging
import struct

from kvproto import codec
from kvproto.metapb import Store, StoreId, StoreState
from kvproto.pd_client import PdClient, PdServerError
from kvproto.raft_serverpb import StoreIdent
from store_node import keys
from store_node.engine import Engine, WriteBatch, scan_cursor

__all__ = [
    "AddressTakenError",
    "ReplaceStoreError",
    "address_taken",
    "check_no_pending",
    "check_restart",
    "join_in_place",
    "replaced_store",
]

log = logging.getLogger(__name__)

_U64 = struct.Struct(">Q")
_PAIR = struct.Struct(">QQ")


class ReplaceStoreError(Exception):
    """`--replace-store` cannot be done (the data directory is not empty,
    or the PD refused: the store named may be alive, is at another address,
    is unknown or was replaced already). Nothing was replaced."""


class AddressTakenError(Exception):
    """A store with an empty data directory found its address registered
    to another store."""


def replaced_store(engine: Engine) -> int | None:
    """The store this data directory's store replaced, if it did."""
    raw = engine.kv_get(keys.META_DB, keys.REPLACED_STORE_KEY)
    return None if raw is None else int(_U64.unpack(raw)[0])


def check_restart(engine: Engine, ident: StoreIdent, replace: int) -> None:
    """`--replace-store replace` given to a data directory with an
    identity: fine for the store that replaced `replace` (the flag left in
    a unit file), refused otherwise."""
    if replaced_store(engine) == replace:
        log.info(
            "store %d replaced store %d before: --replace-store %d has nothing more to do",
            ident.store_id,
            replace,
            replace,
        )
        return
    if ident.store_id == replace:
        raise ReplaceStoreError(
            f"--replace-store {replace}: this data directory is store {replace}'s own, "
            "so its data is not lost; start it without --replace-store"
        )
    raise ReplaceStoreError(
        f"--replace-store {replace} needs an empty data directory, and this one holds "
        f"store {ident.store_id}"
    )


def check_no_pending(engine: Engine) -> None:
    """Refuse to join as an ordinary new store where a replacement was
    begun: the PD may already have registered it."""
    pending = _read_pending(engine)
    if pending is not None:
        _, replaced = pending
        raise ReplaceStoreError(
            f"a replacement of store {replaced} was begun in this data directory: start "
            f"with --replace-store {replaced} to finish it, or empty the directory"
        )


async def join_in_place(
    engine: Engine,
    pd: PdClient,
    address: str,
    labels: tuple[tuple[str, str], ...],
    replace: int,
    *,
    bootstrapped: bool,
) -> StoreIdent:
    """Steps 1-4 of the module's docstring for a data directory without
    an identity; returns the new identity."""
    pending = _read_pending(engine)
    if pending is None:
        held = _contents(engine)
        if held:
            raise ReplaceStoreError(
                f"--replace-store {replace} needs an empty data directory, and this one "
                f"holds {', '.join(held)}"
            )
        if not bootstrapped:
            raise ReplaceStoreError(
                f"--replace-store {replace}: the PD has no cluster, so no store {replace} "
                "to replace (is --pd right?)"
            )
        store_id = await pd.alloc_id()
        _write_pending(engine, store_id, replace)
    else:
        store_id, begun = pending
        if begun != replace:
            raise ReplaceStoreError(
                f"a replacement of store {begun} was begun in this data directory, not of "
                f"store {replace}: start with --replace-store {begun} to finish it, or "
                "empty the directory"
            )
        log.info("resuming the replacement of store %d as store %d", replace, store_id)
    store = Store(StoreId(store_id), address, StoreState.UP, labels)
    try:
        await pd.replace_store(store, replace)
    except PdServerError as e:
        raise ReplaceStoreError(
            f"the PD refused to replace store {replace} with this store: {e.error.message}"
        ) from None
    ident = StoreIdent(pd.cluster_id, StoreId(store_id))
    batch = WriteBatch()
    batch.put(keys.META_DB, keys.STORE_IDENT_KEY, codec.dumps(ident))
    batch.put(keys.META_DB, keys.REPLACED_STORE_KEY, _U64.pack(replace))
    batch.delete(keys.META_DB, keys.PREPARE_REPLACE_KEY)
    engine.write_kv_batch(batch)
    engine.sync_kv()
    log.warning(
        "joined cluster %d as store %d in the place of store %d (its data was lost): "
        "store %d is now a Tombstone, and its replicas are re-created",
        pd.cluster_id,
        store_id,
        replace,
        replace,
    )
    return ident


async def address_taken(pd: PdClient, address: str, error: PdServerError) -> Exception:
    """The start error of a store with an empty data directory whose
    address another store holds (`error`, DUPLICATE_STORE_ADDRESS)."""
    holders = [s for s in await pd.get_all_stores() if s.address == address]
    if not holders:  # freed meanwhile: the PD's own words
        return AddressTakenError(f"the PD refused this store: {error.error.message}")
    holder = holders[0]
    return AddressTakenError(
        f"address {address} is store {holder.id}'s ({holder.state.name.lower()}), and this "
        f"data directory holds no store. If store {holder.id} lost its data, start this "
        f"store with --replace-store {holder.id} to join in its place (store {holder.id} "
        "becomes a Tombstone and its replicas are re-created); otherwise give this store "
        "another address (--advertise)"
    )


def _read_pending(engine: Engine) -> tuple[int, int] | None:
    raw = engine.kv_get(keys.META_DB, keys.PREPARE_REPLACE_KEY)
    if raw is None:
        return None
    store_id, replaced = _PAIR.unpack(raw)
    return int(store_id), int(replaced)


def _write_pending(engine: Engine, store_id: int, replaced: int) -> None:
    batch = WriteBatch()
    batch.put(keys.META_DB, keys.PREPARE_REPLACE_KEY, _PAIR.pack(store_id, replaced))
    engine.write_kv_batch(batch)
    engine.sync_kv()


def _contents(engine: Engine) -> list[str]:
    """What the data directory holds that a fresh store's does not."""
    held = []
    with engine.read_kv() as txn:
        for db, what in (
            (keys.META_DB, "store metadata"),
            (keys.REGION_DB, "regions"),
            (keys.DATA_DB, "data"),
            (keys.SESSION_DB, "client sessions"),
        ):
            if next(scan_cursor(txn, engine.kv_db(db), b"", b""), None) is not None:
                held.append(what)
    with engine.read_raft() as txn:
        for db, what in ((keys.LOG_DB, "a Raft log"), (keys.STATE_DB, "Raft states")):
            if next(scan_cursor(txn, engine.raft_db(db), b"", b""), None) is not None:
                held.append(what)
    return held
