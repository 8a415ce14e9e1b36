"""Values that cross the boundary of the Raft core: messages, entries, states.

Everything here is a frozen, slotted dataclass or an IntEnum whose values are
part of the wire and disk formats (kvproto encodes them): values are never
reused or renumbered.

Rules of this package: no I/O, no clock, no trio, no global random.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

# Node id 0 means "nobody" (no leader known, no vote cast).
NONE = 0


class MessageType(IntEnum):
    APPEND = 1
    APPEND_RESPONSE = 2
    VOTE = 3
    VOTE_RESPONSE = 4
    PRE_VOTE = 5
    PRE_VOTE_RESPONSE = 6
    HEARTBEAT = 7
    HEARTBEAT_RESPONSE = 8
    SNAPSHOT = 9
    TIMEOUT_NOW = 10
    READ_INDEX = 11
    READ_INDEX_RESPONSE = 12
    TRANSFER_LEADER = 13


class EntryType(IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before a node answers anyone (Raft paper, Figure 2)."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


EMPTY_HARD_STATE = HardState()


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth telling the application about; never persisted."""

    leader_id: int = NONE
    role: Role = Role.FOLLOWER


@dataclass(frozen=True, slots=True)
class ConfState:
    """A membership configuration, as applied.

    Outside a joint configuration `voters_outgoing` is empty. During one,
    `voters` is the incoming majority and `voters_outgoing` the outgoing one;
    `learners_next` are voters of the outgoing config that become learners
    when the joint config is left. Tuples are sorted.
    """

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    voters_outgoing: tuple[int, ...] = ()
    learners_next: tuple[int, ...] = ()
    auto_leave: bool = False

    @property
    def is_joint(self) -> bool:
        return bool(self.voters_outgoing)

    def describe(self) -> str:
        """Stable text, e.g. ``voters=(1 2 3)&&(1 2 4) learners=(5)``."""

        def ids(t: tuple[int, ...]) -> str:
            return " ".join(map(str, t))

        out = f"voters=({ids(self.voters)})"
        if self.voters_outgoing:
            out += f"&&({ids(self.voters_outgoing)})"
        if self.learners:
            out += f" learners=({ids(self.learners)})"
        if self.learners_next:
            out += f" learners_next=({ids(self.learners_next)})"
        if self.auto_leave:
            out += " autoleave"
        return out

    def all_ids(self) -> tuple[int, ...]:
        return tuple(
            sorted(
                set(self.voters)
                | set(self.learners)
                | set(self.voters_outgoing)
                | set(self.learners_next)
            )
        )


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A point-in-time image of the application state; `data` is opaque to Raft."""

    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    data: bytes = b""

    @property
    def is_empty(self) -> bool:
        return self.metadata.index == 0


EMPTY_SNAPSHOT = Snapshot()


@dataclass(frozen=True, slots=True)
class Message:
    """One Raft message. Field use per type follows etcd's raftpb.

    * `log_term`/`index`: for APPEND the entry preceding `entries`; for
      VOTE/PRE_VOTE the candidate's last entry; for APPEND_RESPONSE the
      highest index acknowledged (or, on reject, the rejected index).
    * `reject_hint`/`log_term` on a rejected APPEND_RESPONSE: the follower's
      guess of the last index that may match and its term (fast back-off).
    * `context`: opaque bytes carried through (ReadIndex request contexts,
      campaign-by-transfer marker).
    """

    type: MessageType
    to: int
    from_: int
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex result: reads tagged `request_ctx` may be served once the
    application has applied up to `index`."""

    index: int
    request_ctx: bytes


class ConfChangeType(IntEnum):
    ADD_NODE = 0  # add a voter, or promote a learner to voter
    REMOVE_NODE = 1
    ADD_LEARNER = 2  # add a learner, or demote a voter (joint only)


class ConfChangeTransition(IntEnum):
    # Simple changes (at most one voter touched) are applied directly; others
    # go through a joint configuration that is left automatically.
    AUTO = 0
    # Always enter a joint configuration; leave it automatically.
    JOINT_IMPLICIT = 1
    # Always enter a joint configuration; the application leaves it with an
    # empty ConfChange.
    JOINT_EXPLICIT = 2


@dataclass(frozen=True, slots=True)
class ConfChangeSingle:
    type: ConfChangeType
    node_id: int


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A membership change proposal. An empty `changes` means "leave joint".

    `context` is opaque to Raft (the store puts the peer's store id there).
    """

    changes: tuple[ConfChangeSingle, ...] = ()
    transition: ConfChangeTransition = ConfChangeTransition.AUTO
    context: bytes = b""

    @property
    def leaves_joint(self) -> bool:
        return not self.changes

    def enters_joint(self) -> bool:
        """Whether applying this change enters a joint config (and if so,
        whether it leaves it automatically is `auto_leave`)."""
        if self.leaves_joint:
            return False
        return self.transition != ConfChangeTransition.AUTO or len(self.changes) > 1

    @property
    def auto_leave(self) -> bool:
        return self.enters_joint() and self.transition != ConfChangeTransition.JOINT_EXPLICIT

    # Entry payloads must be encodable by the core itself (it proposes the
    # empty "leave joint" change on its own), so this is a tiny fixed format
    # rather than CBOR: version byte, transition, count, (type, id)*, context.
    _HEADER = struct.Struct(">BBH")
    _CHANGE = struct.Struct(">BQ")
    _VERSION = 1

    def encode(self) -> bytes:
        parts = [self._HEADER.pack(self._VERSION, self.transition, len(self.changes))]
        parts.extend(self._CHANGE.pack(c.type, c.node_id) for c in self.changes)
        parts.append(self.context)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        """Decode an entry payload; raises ValueError on malformed input."""
        try:
            version, transition, n = cls._HEADER.unpack_from(data, 0)
            if version != cls._VERSION:
                raise ValueError(f"unknown conf change encoding version {version}")
            offset = cls._HEADER.size
            changes = []
            for _ in range(n):
                kind, node_id = cls._CHANGE.unpack_from(data, offset)
                offset += cls._CHANGE.size
                changes.append(ConfChangeSingle(ConfChangeType(kind), node_id))
            return cls(tuple(changes), ConfChangeTransition(transition), bytes(data[offset:]))
        except struct.error as e:
            raise ValueError(f"truncated conf change: {e}") from e


def is_response(t: MessageType) -> bool:
    return t in _RESPONSES


_RESPONSES = frozenset(
    {
        MessageType.APPEND_RESPONSE,
        MessageType.VOTE_RESPONSE,
        MessageType.PRE_VOTE_RESPONSE,
        MessageType.HEARTBEAT_RESPONSE,
        MessageType.READ_INDEX_RESPONSE,
    }
)


def vote_response_type(t: MessageType) -> MessageType:
    if t == MessageType.VOTE:
        return MessageType.VOTE_RESPONSE
    if t == MessageType.PRE_VOTE:
        return MessageType.PRE_VOTE_RESPONSE
    raise AssertionError(f"not a vote message: {t!r}")
