"""Hibernating regions (TiKV's hibernate regions): an idle region stops
ticking, so it sends no heartbeats and runs no timers, and costs nothing
while nothing happens to it.

The rules (StoreCore drives them; the simulation checks them):

* A leader is *idle* when nothing waits in it (no proposal, no queued write
  or read, no ReadIndex round) and every member holds its whole log, which
  is committed and applied, with no joint configuration and no transfer.
  After `CoreConfig.hibernate_after_ticks` idle ticks its heartbeats carry
  `HibernateFlag.REQUEST`.
* A follower that steps a REQUEST heartbeat from its leader, and holds
  exactly the leader's log (its last index is the commit the heartbeat
  carries), falls asleep; its answer carries `HibernateFlag.ACK`. Asleep,
  it is not ticked, so its election timer stands still: it counts no time
  towards an election, and (CheckQuorum) it keeps refusing votes as one
  that heard its leader lately. A lease held by its leader is therefore
  never cut short by it; the lease itself runs out on the leader's clock
  as always (nothing here renews one).
* The leader falls asleep at the tick when every other member has acked.
* Anything that happens to a peer wakes it (StoreCore._touch): a message
  other than the hibernation handshake's, a proposal, a read that needs a
  round, an order. A leader woken sends heartbeats at its next ticks, which
  wake its followers.
* Store liveness stands in for the silent heartbeats: every store sends
  each store it shares a sleeping region with a batch at least every
  heartbeat interval (an empty one if nothing else goes there), stamped
  with the sender's incarnation (drawn at start). When a store has been
  silent for `liveness_ticks`, or comes back with another incarnation (it
  restarted), the sleeping peers whose leader is there wake, and elect a
  new leader after an election timeout if it is gone; sleeping leaders with
  a follower there wake too, to notice it is down. A sleeping leader counts
  its followers as heard as long as their stores are (`heard_ticks`), so
  the PD is not told of down peers that are only asleep.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kvproto.metapb import StoreId
from kvproto.raft_serverpb import HibernateFlag
from raft.types import Message, MessageType
from store_node.peer import Peer

__all__ = [
    "StoreLiveness",
    "depends_on",
    "flag_for",
    "leader_idle",
    "may_sleep_on",
    "watched_stores",
]


def leader_idle(peer: Peer) -> bool:
    """Whether a leader may ask its region to sleep: see the module doc."""
    if (
        peer.proposals
        or peer.queued_writes
        or peer.queued_reads
        or peer.queued_stale
        or peer.reading
        or peer.read_waiting
        or peer.pending_remove
        or peer.generating
        or not peer.initialized
    ):
        return False
    node = peer.node
    last = node.last_index
    if node.commit_index != last or node.applied_index != last or node.transferring_leadership:
        return False
    if node.conf_state().voters_outgoing:
        return False
    status = node.status()
    return all(pr.match == last for pid, pr in status.progress.items() if pid != status.id)


def may_sleep_on(peer: Peer, m: Message) -> bool:
    """Whether a follower that just stepped `m`, a REQUEST heartbeat, holds
    exactly its leader's log and so may sleep."""
    node = peer.node
    return (
        m.type == MessageType.HEARTBEAT
        and node.leader_id == m.from_
        and node.term == m.term
        and node.last_index == m.commit
        and node.commit_index == m.commit
    )


def flag_for(peer: Peer, m: Message) -> HibernateFlag:
    """The hibernation flag of an outgoing message of `peer`."""
    if m.type == MessageType.HEARTBEAT and peer.wants_sleep:
        return HibernateFlag.REQUEST
    if m.type == MessageType.HEARTBEAT_RESPONSE and peer.asleep:
        return HibernateFlag.ACK
    return HibernateFlag.NONE


@dataclass(slots=True)
class StoreLiveness:
    """When each other store was last heard from (any batch), in this
    store's ticks, and with which incarnation."""

    seen: dict[StoreId, int] = field(default_factory=dict)
    incarnations: dict[StoreId, int] = field(default_factory=dict)
    # Stores that sleeping peers here depend on: pinged, and watched.
    watched: set[StoreId] = field(default_factory=set)
    # Watched stores found silent (their sleepers were woken once).
    silent: set[StoreId] = field(default_factory=set)

    def heard(self, store_id: StoreId, incarnation: int, tick: int) -> bool:
        """Record a batch from `store_id`; True if it restarted since the
        previous one (another incarnation)."""
        self.seen[store_id] = tick
        self.silent.discard(store_id)
        before = self.incarnations.get(store_id)
        self.incarnations[store_id] = incarnation
        return before is not None and before != incarnation

    def watch(self, stores: Iterable[StoreId], tick: int) -> None:
        for s in stores:
            if s not in self.watched:
                self.watched.add(s)
                # Not heard yet: give it a full timeout from now.
                self.seen.setdefault(s, tick)

    def newly_silent(self, tick: int, timeout: int) -> list[StoreId]:
        """Watched stores silent for `timeout` ticks, each reported once
        until it is heard again."""
        found = sorted(
            s
            for s in self.watched
            if s not in self.silent and tick - self.seen.get(s, tick) >= timeout
        )
        self.silent.update(found)
        return found

    def heard_tick(self, store_id: StoreId) -> int | None:
        return self.seen.get(store_id)


def watched_stores(peer: Peer) -> set[StoreId]:
    """The stores a sleeping peer depends on: a follower its leader's, a
    leader every other member's."""
    if peer.is_leader():
        return {p.store_id for p in peer.region.peers if p.id != peer.meta.id}
    leader = peer.leader_meta()
    return set() if leader is None else {leader.store_id}


def depends_on(peer: Peer, store_id: StoreId) -> bool:
    """Whether a sleeping peer must wake when `store_id` goes silent or
    restarts."""
    return store_id in watched_stores(peer)
