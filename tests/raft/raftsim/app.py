"""The application of a simulated node: a tiny KV state machine.

Every proposal carries a unique proposal id (`pid`), so the checker can tell
which proposal an applied entry came from. The state machine keeps a running
digest of every entry it applied (index, term, type, data), so two nodes at
the same applied index hold the same state exactly when their digests agree,
and a snapshot can be checked against the history it claims to summarize.
"""

from __future__ import annotations

import json
import zlib

from raft import ConfState, Entry, EntryType, Snapshot

from .trace import Violation

_PROPOSAL_PREFIX = b"P"
_CONF_PREFIX = b"C"


def encode_proposal(pid: int, key: int, value: int) -> bytes:
    return b"P%d:%d=%d" % (pid, key, value)


def decode_proposal(data: bytes) -> tuple[int, int, int]:
    """(pid, key, value) of a normal entry's payload; ValueError if malformed."""
    if not data.startswith(_PROPOSAL_PREFIX):
        raise ValueError(f"not a proposal: {data!r}")
    head, _, value = data[1:].partition(b"=")
    pid, _, key = head.partition(b":")
    return int(pid), int(key), int(value)


def conf_context(pid: int) -> bytes:
    return b"C%d" % pid


def decode_conf_context(ctx: bytes) -> int:
    if not ctx.startswith(_CONF_PREFIX):
        raise ValueError(f"not a conf change context: {ctx!r}")
    return int(ctx[1:])


def entry_digest(digest: int, e: Entry) -> int:
    return zlib.crc32(e.data, zlib.crc32(b"%d/%d/%d;" % (e.index, e.term, e.type), digest))


class KvStateMachine:
    """What one node applied. Lives in memory: a crash loses it, and a restart
    rebuilds it from the last snapshot plus the committed log."""

    __slots__ = ("applied", "conf_state", "digest", "kv")

    def __init__(self, applied: int, digest: int, conf_state: ConfState) -> None:
        self.applied = applied
        self.digest = digest
        self.conf_state = conf_state
        self.kv: dict[int, int] = {}

    def apply(self, e: Entry) -> None:
        if e.index != self.applied + 1:
            raise Violation(
                "state-machine-safety", f"handed entry {e.index} to apply after {self.applied}"
            )
        if e.type == EntryType.NORMAL and e.data:
            _, key, value = decode_proposal(e.data)
            self.kv[key] = value
        self.applied = e.index
        self.digest = entry_digest(self.digest, e)

    def snapshot_data(self) -> bytes:
        body = {"applied": self.applied, "digest": self.digest, "kv": sorted(self.kv.items())}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> KvStateMachine:
        body = json.loads(snap.data)
        if body["applied"] != snap.metadata.index:
            raise Violation(
                "snapshot-integrity",
                f"snapshot data at {body['applied']} under metadata at {snap.metadata.index}",
            )
        sm = cls(body["applied"], body["digest"], snap.metadata.conf_state)
        sm.kv = dict(body["kv"])
        return sm
