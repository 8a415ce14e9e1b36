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

import logging
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from kvproto.metapb import PeerId, StoreId
from kvproto.raft_serverpb import HibernateFlag, RaftMessage
from raft.types import Message, MessageType
from store_node.peer import Peer

if TYPE_CHECKING:  # round_output imports flag_for from here
    from store_node.round_output import RoundOutput

log = logging.getLogger(__name__)

# How often the stores watched for sleeping peers are recomputed (ticks).
_REWATCH_TICKS: Final = 600

__all__ = [
    "Hibernation",
    "StoreLiveness",
    "depends_on",
    "flag_for",
    "leader_idle",
    "may_sleep_on",
    "watched_stores",
]


def leader_idle(peer: Peer) -> bool:
    """Whether a leader may ask its region to sleep: see the module doc."""
    if peer.has_waiting() or peer.pending_remove or peer.generating or not peer.initialized:
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


class Hibernation:
    """One store's side of hibernation: which of its peers are awake (the
    only ones ticked), the leaders' idle count and handshake, and the
    liveness of the stores its sleepers depend on. StoreCore owns it and
    calls it from its entry points; what to wake is returned as region ids
    for the core to run (`StoreCore._touch`)."""

    def __init__(
        self,
        peers: Mapping[int, Peer],
        stats: MutableMapping[str, int],
        *,
        after_ticks: int,
        liveness_ticks: int,
        heartbeat_ticks: int,
    ) -> None:
        self._peers = peers
        self._stats = stats
        self.after_ticks = after_ticks  # 0: never sleep
        self._liveness_ticks = liveness_ticks
        self._heartbeat_ticks = heartbeat_ticks
        self.awake: set[int] = set()
        self.liveness = StoreLiveness()
        # Liveness batches are due with the next round.
        self._pings = False
        # Followers woken here whose leader may still sleep: told next round.
        self._tell_leader: set[int] = set()

    def has_work(self) -> bool:
        return self._pings or bool(self._tell_leader)

    def to_tick(self) -> list[Peer]:
        """The awake peers, in region order."""
        out = []
        for rid in sorted(self.awake):
            peer = self._peers.get(rid)
            if peer is None or peer.asleep:
                self.awake.discard(rid)
            else:
                out.append(peer)
        return out

    def ticked(self, peer: Peer, tick: int) -> None:
        """A leader counts its idle ticks; once idle long enough its
        heartbeats ask to sleep, and it sleeps when every other member acked."""
        if not self.after_ticks:
            return
        if not peer.is_leader() or not leader_idle(peer):
            _reset_idle(peer)
            return
        peer.idle_ticks += 1
        if peer.idle_ticks < self.after_ticks:
            return
        peer.wants_sleep = True
        others = {p.id for p in peer.region.peers if p.id != peer.meta.id}
        if others <= peer.sleep_acks:
            self.sleep(peer, tick)

    def sleep(self, peer: Peer, tick: int) -> None:
        peer.asleep = True
        self.awake.discard(peer.region_id)
        self.liveness.watch(watched_stores(peer), tick)
        self._stats["hibernations"] += 1

    def wake(self, peer: Peer, *, tell_leader: bool = True) -> None:
        """Awake (ticked) from now; its idleness starts over. A follower
        woken by something of its own tells its leader (`HibernateFlag.WAKE`)."""
        if peer.asleep:
            if peer.is_leader():
                # Its followers were heard through their stores meanwhile.
                peer.last_heard.update(self.heard_ticks(peer))
            elif tell_leader and peer.node.leader_id:
                self._tell_leader.add(peer.region_id)
            peer.asleep = False
            self._stats["wakeups"] += 1
        self.awake.add(peer.region_id)
        _reset_idle(peer)

    def stepped(self, peer: Peer, msg: RaftMessage, tick: int) -> None:
        """`msg` was stepped into `peer`: the handshake, or a wake-up."""
        m = msg.message
        if msg.hibernate == HibernateFlag.WAKE:
            self.wake(peer)
        elif m.type == MessageType.HEARTBEAT_RESPONSE:
            # Neither wakes a leader nor ends its idleness: they come every
            # heartbeat. An ACK counts towards its sleep.
            if msg.hibernate == HibernateFlag.ACK and peer.wants_sleep:
                peer.sleep_acks.add(msg.from_peer.id)
        elif msg.hibernate == HibernateFlag.REQUEST and self.after_ticks and may_sleep_on(peer, m):
            # (A store with hibernation off never sleeps, nor acks: its
            # regions stay awake whatever their leaders' stores do.)
            if not peer.asleep:
                self.sleep(peer, tick)
        else:
            self.wake(peer, tell_leader=False)

    def heard_ticks(self, peer: Peer) -> dict[PeerId, int]:
        """When each other member was last heard from (store ticks): a
        sleeping leader hears its followers through their stores."""
        if not peer.asleep:
            return peer.last_heard
        heard = dict(peer.last_heard)
        for p in peer.region.peers:
            seen = self.liveness.heard_tick(p.store_id)
            if p.id != peer.meta.id and seen is not None:
                heard[p.id] = max(heard.get(p.id, seen), seen)
        return heard

    def heard_from_store(self, store_id: StoreId, incarnation: int, tick: int) -> list[int]:
        """A batch from `store_id` arrived; the regions to wake if it restarted."""
        if self.liveness.heard(store_id, incarnation, tick):
            return self._dependents(store_id, "restarted")
        return []

    def check_liveness(self, tick: int) -> list[int]:
        """Each tick: pings due, and the regions to wake because a store
        they depend on went silent."""
        if not self.liveness.watched:
            return []
        if tick % self._heartbeat_ticks == 0:
            self._pings = True
        if tick % _REWATCH_TICKS == 0:
            # Forget the stores no sleeping peer depends on any more.
            still: set[StoreId] = set()
            for peer in self._peers.values():
                if peer.asleep:
                    still |= watched_stores(peer)
            self.liveness.watched &= still
        woken: list[int] = []
        for store_id in self.liveness.newly_silent(tick, self._liveness_ticks):
            woken += self._dependents(store_id, "silent")
        return woken

    def _dependents(self, store_id: StoreId, why: str) -> list[int]:
        found = [
            rid
            for rid, peer in sorted(self._peers.items())
            if peer.asleep and depends_on(peer, store_id)
        ]
        if found:
            log.info("store %d %s: %d sleeping regions wake", store_id, why, len(found))
        return found

    def flush(self, out: RoundOutput) -> None:
        """The round's liveness batches and followers' wake-up calls."""
        if self._pings:
            self._pings = False
            out.pings.extend(sorted(self.liveness.watched))
        for rid in sorted(self._tell_leader):
            peer = self._peers.get(rid)
            if peer is not None and not peer.is_leader() and peer.node.leader_id:
                node = peer.node
                wake = Message(
                    MessageType.HEARTBEAT_RESPONSE, to=node.leader_id, from_=node.id, term=node.term
                )
                out.route(peer, wake, out.messages_now, HibernateFlag.WAKE)
        self._tell_leader.clear()


def _reset_idle(peer: Peer) -> None:
    peer.idle_ticks = 0
    peer.wants_sleep = False
    peer.sleep_acks.clear()
