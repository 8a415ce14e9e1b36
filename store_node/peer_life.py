"""Which peers a store holds: starting a peer from its persisted state,
whether a Raft message may create a peer here,
when a peer learns it was removed or replaced, and what destroying one
leaves (no data, no log, a tombstone, its term and vote).

Owns the tombstones and the destroys due; the peers themselves belong to
`StoreCore`, which asks `route` what to do with each message and carries
out the answer.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kvproto.errorpb import RegionNotFound
from kvproto.metapb import Peer as PeerMeta
from kvproto.metapb import Region, RegionEpoch, RegionId, StoreId, ranges_overlap
from kvproto.raft_serverpb import RaftMessage
from raft.config import Config as RaftConfig
from raft.node import RaftNode
from raft.types import HardState, Message, MessageType
from store_node import membership
from store_node.bootstrap import destroyed_hard_state
from store_node.engine import Engine
from store_node.peer import Peer
from store_node.peer_storage import PeerStorage
from store_node.records import ApplyState
from store_node.region_tasks import DestroyTask, Range, subtract_ranges
from store_node.round_output import RoundOutput

log = logging.getLogger(__name__)

# Message types that may create a peer (a leader or a candidate reaching a
# store that has no peer of the region yet).
_CREATING_TYPES = frozenset(
    {
        MessageType.APPEND,
        MessageType.HEARTBEAT,
        MessageType.SNAPSHOT,
        MessageType.VOTE,
        MessageType.PRE_VOTE,
    }
)


@dataclass(frozen=True, slots=True)
class Create:
    """Create this peer (uninitialized: it waits for a snapshot), then step
    the message into it."""

    meta: PeerMeta


@dataclass(frozen=True, slots=True)
class Early:
    """A peer a split not yet applied here will create: keep the message."""


Route = Peer | Create | Early | None


def other_ranges(peers: Mapping[int, Peer], region_id: int) -> list[Range]:
    """The ranges of every initialized peer here but `region_id`'s."""
    return [
        (p.region.start_key, p.region.end_key)
        for p in peers.values()
        if p.region_id != region_id and p.initialized
    ]


def overlapping(peers: Mapping[int, Peer], region_id: int, start: bytes, end: bytes) -> Peer | None:
    """An initialized peer of another region overlapping [start, end)."""
    for p in peers.values():
        if (
            p.region_id != region_id
            and p.initialized
            and ranges_overlap(p.region.start_key, p.region.end_key, start, end)
        ):
            return p
    return None


def start_peer(
    engine: Engine,
    region: Region,
    meta: PeerMeta,
    apply_state: ApplyState,
    raft_config: RaftConfig,
    rng: random.Random,
) -> Peer:
    """A peer of `region` on this store, from its persisted state (`meta`
    and an empty region for one created uninitialized)."""
    storage = PeerStorage(
        engine,
        region.id,
        membership.conf_state_of(region),
        apply_state,
        region_version=region.epoch.version,
    )
    hs = storage.hard_state
    if hs.term < apply_state.truncated_term:
        # A region created by a split starts at the implied initial log
        # point; a hard state from before (none, or a vote cast by a
        # placeholder peer in an older term) is brought up to it.
        hs = HardState(apply_state.truncated_term, 0, hs.commit)
    if hs.commit < apply_state.applied_index:
        # A commit index is written lazily; anything applied was committed.
        hs = HardState(hs.term, hs.vote, apply_state.applied_index)
    storage.hard_state = hs
    node = RaftNode(raft_config, storage, random.Random(rng.getrandbits(64)))
    peer = Peer(
        region=region,
        meta=meta,
        storage=storage,
        node=node,
        read_nonce=rng.getrandbits(64),
    )
    peer.remember_peers(region)
    return peer


class PeerLife:
    def __init__(self, store_id: StoreId, tombstones: Iterable[Region] = ()) -> None:
        self.store_id = store_id
        # Regions removed from this store: region as last known, by id.
        self.tombstones: dict[int, Region] = {r.id: r for r in tombstones}
        # Peers to destroy at the start of the next round, with why.
        self.to_destroy: dict[int, str] = {}
        # Tombstone messages to send (to removed peers still talking).
        self.messages: dict[StoreId, list[RaftMessage]] = defaultdict(list)
        # Stores whose messages reached this one (already logged).
        self._misaddressed: set[StoreId] = set()

    def misaddressed(self, msg: RaftMessage) -> None:
        """A message for another store arrived: after a store replaced one
        whose data was lost, at its address, every leader with a peer on the
        old store sends here until that peer is removed (thousands a second
        at thousands of regions). Logged once per store addressed."""
        store_id = msg.to_peer.store_id
        if store_id not in self._misaddressed:
            self._misaddressed.add(store_id)
            log.warning(
                "store %d: messages for store %d arrive here and are dropped (was it "
                "replaced by this one?); further ones are counted, not logged",
                self.store_id,
                store_id,
            )

    def route(self, msg: RaftMessage, peers: Mapping[int, Peer]) -> Route:
        """What to do with a Raft message for a region of this store: step it
        into a peer, create the peer first, keep it for a split, or drop it
        (None; a tombstone message or a newer peer marks ours to destroy)."""
        peer = peers.get(msg.region_id)
        if msg.is_tombstone:
            if (
                peer is not None
                and peer.meta.id == msg.to_peer.id
                and msg.region_epoch.conf_ver > peer.region.epoch.conf_ver
            ):
                self.to_destroy[peer.region_id] = "removed from the region (told by a member)"
            return None
        if peer is None:
            return self._creates(msg, peers)
        if msg.to_peer.id != peer.meta.id:
            if msg.to_peer.id > peer.meta.id:
                # We were removed and added again as a new peer: the old one
                # goes; the next message creates the new one.
                self.to_destroy[peer.region_id] = f"replaced by peer {msg.to_peer.id}"
            return None
        if (
            peer.initialized
            and peer.region.find_peer(msg.from_peer.id) is None
            and msg.region_epoch.conf_ver < peer.region.epoch.conf_ver
        ):
            # A removed peer still talking: tell it so it destroys itself.
            self._send_tombstone(peer, msg.from_peer)
            return None
        return peer

    def _creates(self, msg: RaftMessage, peers: Mapping[int, Peer]) -> Route:
        if msg.message.type not in _CREATING_TYPES:
            return None
        tomb = self.tombstones.get(msg.region_id)
        if tomb is not None:
            old = tomb.peer_on_store(self.store_id)
            if msg.region_epoch.conf_ver <= tomb.epoch.conf_ver or (
                old is not None and msg.to_peer.id <= old.id
            ):
                log.debug("region %d: message for a removed peer ignored", msg.region_id)
                return None
        other = overlapping(peers, msg.region_id, msg.start_key, msg.end_key)
        if other is not None:
            # Otherwise this message or the overlapping region is stale; both
            # resolve on their own (GC or a later message).
            log.debug(
                "region %d: not created, overlaps region %d here", msg.region_id, other.region_id
            )
            if other.region.epoch.version < msg.region_epoch.version:
                # Most likely a split we have not applied yet will create
                # this peer: keep the message (e.g. the new leader's vote
                # request) for then, instead of making it wait an election.
                return Early()
            return None
        return Create(msg.to_peer)

    def _send_tombstone(self, peer: Peer, to: PeerMeta) -> None:
        self.messages[to.store_id].append(
            RaftMessage(
                region_id=RegionId(peer.region_id),
                from_peer=peer.meta,
                to_peer=to,
                region_epoch=peer.region.epoch,
                message=Message(type=MessageType.HEARTBEAT, to=to.id, from_=peer.meta.id),
                is_tombstone=True,
            )
        )

    def destroy(self, peer: Peer, others: list[Range], out: RoundOutput) -> None:
        """Destroy `peer` (already out of the store's peers) in this round:
        answer its waiters, delete its data outside `others` (the ranges of
        the other peers here), leave a tombstone, delete its log and keep
        its term and vote."""
        region_id = peer.region_id
        out.replies.extend(peer.fail_all(RegionNotFound(RegionId(region_id))))
        if peer.initialized:
            tomb = peer.region
            clear = tuple(subtract_ranges((peer.region.start_key, peer.region.end_key), others))
        else:
            # No data, no region record; but the tombstone must stay (an older
            # peer's, if any) and name this peer, so that a delayed message
            # cannot create it again with an empty hard state.
            old = self.tombstones.get(region_id)
            tomb = Region(
                RegionId(region_id),
                old.start_key if old else b"",
                old.end_key if old else b"",
                old.epoch if old else RegionEpoch(0, 0),
                (peer.meta,),
            )
            clear = ()
        out.destroy_tasks.append(DestroyTask(tomb, clear))
        self.tombstones[region_id] = tomb
        # The log goes, the term and vote stay; durably before the next round,
        # since a new peer of this region may be created from the next message
        # and reads them from raft/.
        peer.storage.clear_log(out.raft_after_kv)
        peer.storage.set_hard_state(
            destroyed_hard_state(peer.storage.hard_state), out.raft_after_kv
        )
        out.must_sync_after_kv = True
        if peer.storage.generated is not None:
            out.obsolete_files.append(peer.storage.generated[1])
