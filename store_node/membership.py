"""Region peers <-> Raft configurations, and conf changes on region metadata.

A region's peer list *is* its Raft configuration (with store ids attached):
the roles VOTER / LEARNER / INCOMING_VOTER / DEMOTING_VOTER encode a
ConfState, joint or not. The Raft core's own change rules
(`raft.confchange`) compute the next configuration, so the region metadata
and the Raft group can never disagree about which changes are valid.
"""

from __future__ import annotations

from collections.abc import Collection

from kvproto.metapb import Peer, PeerRole, Region
from kvproto.raft_cmdpb import ChangePeer, ChangePeerRequest, ChangePeerType
from raft import confchange
from raft.errors import ConfChangeError
from raft.tracker import ProgressTracker
from raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
)

_CHANGE_TYPES = {
    ChangePeerType.ADD_VOTER: ConfChangeType.ADD_NODE,
    ChangePeerType.REMOVE: ConfChangeType.REMOVE_NODE,
    ChangePeerType.ADD_LEARNER: ConfChangeType.ADD_LEARNER,
}


def conf_state_of(region: Region) -> ConfState:
    voters: list[int] = []
    learners: list[int] = []
    outgoing: list[int] = []
    learners_next: list[int] = []
    joint = any(p.role in (PeerRole.INCOMING_VOTER, PeerRole.DEMOTING_VOTER) for p in region.peers)
    for p in region.peers:
        if p.role == PeerRole.VOTER:
            voters.append(p.id)
            if joint:
                outgoing.append(p.id)
        elif p.role == PeerRole.LEARNER:
            learners.append(p.id)
        elif p.role == PeerRole.INCOMING_VOTER:
            voters.append(p.id)
        else:  # DEMOTING_VOTER: an outgoing voter leaving the voters
            outgoing.append(p.id)
            learners_next.append(p.id)
    return ConfState(
        voters=tuple(sorted(voters)),
        learners=tuple(sorted(learners)),
        voters_outgoing=tuple(sorted(outgoing)),
        learners_next=tuple(sorted(learners_next)),
        auto_leave=joint,
    )


def to_conf_change(req: ChangePeerRequest, context: bytes) -> ConfChange:
    """The Raft conf change for a peer change request; more than one change
    enters a joint config that is left automatically."""
    return ConfChange(
        changes=tuple(
            ConfChangeSingle(_CHANGE_TYPES[c.change_type], c.peer.id) for c in req.changes
        ),
        transition=ConfChangeTransition.AUTO,
        context=context,
    )


def apply_to_region(region: Region, cc: ConfChange, req: ChangePeerRequest | None) -> Region:
    """The region's peer list after `cc` (with `req` giving the peers' stores;
    None for "leave joint"). Raises ConfChangeError if Raft would refuse it.
    The epoch is not bumped here (see kvproto.epoch)."""
    if cc.enters_joint():
        voters = {p.id for p in region.peers if p.role == PeerRole.VOTER}
        for c in cc.changes:
            if c.type == ConfChangeType.REMOVE_NODE and c.node_id in voters:
                # As in TiKV: demote it (ADD_LEARNER) in the joint change and
                # remove the learner afterwards, so that every outgoing-only
                # voter is a DEMOTING_VOTER and the peer list stays a faithful
                # encoding of the ConfState.
                raise ConfChangeError(
                    f"voter {c.node_id} must be demoted, not removed, in a joint change"
                )
    tracker = ProgressTracker(max_inflight=1)
    cfg, prs = confchange.restore(conf_state_of(region), 1, 0, 0)
    tracker.config, tracker.progress = cfg, prs
    if cc.leaves_joint:
        cfg, _ = confchange.leave_joint(tracker, 0)
    elif cc.enters_joint():
        cfg, _ = confchange.enter_joint(tracker, 0, cc.auto_leave, cc.changes)
    else:
        cfg, _ = confchange.simple(tracker, 0, cc.changes)
    cs = cfg.conf_state()

    known: dict[int, Peer] = {p.id: p for p in region.peers}
    if req is not None:
        for pc in req.changes:
            if pc.change_type != ChangePeerType.REMOVE:
                old = known.get(pc.peer.id)
                if old is not None and old.store_id != pc.peer.store_id:
                    raise ConfChangeError(
                        f"peer {pc.peer.id} is on store {old.store_id}, not {pc.peer.store_id}"
                    )
                known[pc.peer.id] = pc.peer
    stores = [p.store_id for i, p in known.items() if i in set(cs.all_ids())]
    if len(stores) != len(set(stores)):
        raise ConfChangeError("two peers of one region on the same store")

    incoming, outgoing = set(cs.voters), set(cs.voters_outgoing)
    learners = set(cs.learners)

    def role(i: int) -> PeerRole:
        if i in learners:
            return PeerRole.LEARNER
        if not outgoing or (i in incoming and i in outgoing):
            return PeerRole.VOTER
        if i in incoming:
            return PeerRole.INCOMING_VOTER
        return PeerRole.DEMOTING_VOTER

    # Keep the peers' order of addition; new ones go last.
    listed = [p.id for p in region.peers]
    order = listed + [i for i in known if i not in set(listed)]
    members = set(cs.all_ids())
    peers = tuple(
        Peer(id=known[i].id, store_id=known[i].store_id, role=role(i))
        for i in order
        if i in members
    )
    return region.with_peers(peers)


def quorum_problem(before: Region, after: Region, healthy: Collection[int]) -> str | None:
    """Why going from `before` to `after` would leave the region without a
    majority of `healthy` voters (in either half of a joint configuration),
    or None. A change that keeps the voters as they are cannot make it
    worse, and is never refused: removing a silent learner must stay
    possible in a region that lost its quorum."""
    was, now = conf_state_of(before), conf_state_of(after)
    if (was.voters, was.voters_outgoing) == (now.voters, now.voters_outgoing):
        return None
    halves = (("voters", now.voters), ("outgoing voters", now.voters_outgoing))
    for name, ids in halves:
        if not ids:
            continue
        up = [i for i in ids if i in healthy]
        if 2 * len(up) <= len(ids):
            return (
                f"unsafe conf change: the {name} after it {list(ids)} would have "
                f"{len(up)} healthy {up}, no majority"
            )
    return None


def describe_change(c: ChangePeer) -> str:
    return f"{c.change_type.name.lower()} peer {c.peer.id} on store {c.peer.store_id}"
