"""Wire forms of the Raft core's values (tags 1..19).

`raft/` must stay free of CBOR, so its dataclasses are registered here
rather than decorated where they are defined. The registry reads their type
hints, so fields added to `raft.types` travel without a change here. The
encoding is positional with an exact arity: both ends of a connection must
run the same field lists (there is no rolling-upgrade story yet).

Tags are part of the wire format: never reused, never renumbered.
"""

from __future__ import annotations

from kvproto.codec import register
from raft import types as rt

register(rt.Entry, 1)
register(rt.HardState, 2)
register(rt.ConfState, 3)
register(rt.SnapshotMetadata, 4)
register(rt.Snapshot, 5)
register(rt.Message, 6)
register(rt.ConfChangeSingle, 7)
register(rt.ConfChange, 8)
