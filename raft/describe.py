"""Stable text renderings of Raft values, for scenario tests and logs.

The formats here are part of the test expectations in
`tests/raft/testdata/*.txt`: change them only together with a `--rewrite`.
"""

from __future__ import annotations

from collections.abc import Iterable

from raft.core import Raft
from raft.node import Ready
from raft.types import ConfChange, ConfState, Entry, EntryType, HardState, Message, Snapshot


def describe_entry(e: Entry) -> str:
    if e.type == EntryType.CONF_CHANGE:
        try:
            cc = ConfChange.decode(e.data)
            body = describe_conf_change(cc)
        except ValueError:
            body = f"<bad conf change {e.data!r}>"
        return f"{e.term}/{e.index} CONF {body}"
    if not e.data:
        return f"{e.term}/{e.index} EMPTY"
    return f"{e.term}/{e.index} {_text(e.data)}"


def describe_entries(ents: Iterable[Entry]) -> str:
    return "[" + ", ".join(describe_entry(e) for e in ents) + "]"


def describe_conf_change(cc: ConfChange) -> str:
    if cc.leaves_joint:
        return "leave-joint"
    names = {0: "v", 1: "r", 2: "l"}
    parts = [f"{names[int(c.type)]}{c.node_id}" for c in cc.changes]
    out = " ".join(parts)
    if cc.enters_joint():
        out += " (joint" + (", auto-leave)" if cc.auto_leave else ")")
    return out


def describe_conf_state(cs: ConfState) -> str:
    return cs.describe()


def describe_snapshot(s: Snapshot) -> str:
    m = s.metadata
    return f"snap {m.term}/{m.index} {describe_conf_state(m.conf_state)}"


def describe_hard_state(hs: HardState) -> str:
    return f"term={hs.term} vote={hs.vote} commit={hs.commit}"


def describe_message(m: Message) -> str:
    out = f"{m.from_}->{m.to} {m.type.name} term={m.term}"
    if m.log_term or m.index:
        out += f" log={m.log_term}/{m.index}"
    if m.commit:
        out += f" commit={m.commit}"
    if m.reject:
        out += f" REJECT hint={m.reject_hint}"
    if m.entries:
        out += " " + describe_entries(m.entries)
    if m.snapshot is not None:
        out += " " + describe_snapshot(m.snapshot)
    if m.context:
        out += f" ctx={_text(m.context)}"
    return out


def describe_ready(rd: Ready) -> str:
    lines: list[str] = []
    if rd.soft_state is not None:
        lines.append(f"lead={rd.soft_state.leader_id} role={rd.soft_state.role.name}")
    if rd.hard_state is not None:
        lines.append("hard state: " + describe_hard_state(rd.hard_state))
    if rd.snapshot is not None:
        lines.append("snapshot: " + describe_snapshot(rd.snapshot))
    if rd.entries:
        lines.append("entries: " + describe_entries(rd.entries))
    if rd.committed_entries:
        lines.append("committed: " + describe_entries(rd.committed_entries))
    for m in rd.messages:
        lines.append("send: " + describe_message(m))
    for m in rd.persisted_messages:
        lines.append("send after persist: " + describe_message(m))
    for rs in rd.read_states:
        lines.append(f"read state: index={rs.index} ctx={_text(rs.request_ctx)}")
    if not lines:
        lines.append("<empty ready>")
    return "\n".join(lines)


def describe_raft(r: Raft) -> str:
    """Role, term, log marks and (on a leader) every follower's progress."""
    lines = [
        (
            f"{r.id}: {r.role.name} term={r.term} vote={r.vote} lead={r.lead} "
            f"commit={r.log.committed} applied={r.log.applied} last={r.log.last_index()}"
        )
    ]
    lines.append(f"   config: {r.trk.config.describe()}")
    if r.lead_transferee:
        lines.append(f"   transferring to {r.lead_transferee}")
    if r.role.name == "LEADER":
        for i, pr in r.trk.items():
            lines.append(f"   {i}: {pr.describe()}")
    return "\n".join(lines)


def _text(b: bytes) -> str:
    try:
        s = b.decode("ascii")
        if s.isprintable():
            return s
    except UnicodeDecodeError:
        pass
    return "0x" + b.hex()
