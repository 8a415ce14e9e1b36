"""kvproto: the wire between stores, the PD and clients.

* `frame`: 4-byte big-endian length, then one CBOR item.
* `codec`: frozen dataclasses <-> tagged positional CBOR arrays, one registry
  (a package: `cbor`, `registry`, `fields`, `messages`).
* `raftpb`, `metapb`, `errorpb`: the registered message types.
* `epoch`: the region-epoch rules (the one copy of them).
* `rpc`: requests, responses and one-way messages over trio TCP (a package:
  `envelope`, `errors`, `client`, `server`, and `reconnect`, a connection that
  comes back after failures).

Message tags are allocated by range, one range per module (each module's
docstring states its range); a tag is never reused or renumbered:

    1..19     raftpb         raft.types values
    20..39    metapb         cluster metadata
    40..59    errorpb        region errors
    60..79    rpc            envelope-level messages
    80..99    backuppb       backup copies of regions (shardkv ctl backup)
    100..199  pdpb           placement driver RPC
    200..239  kvrpcpb        client-facing KV service
    240..279  raft_cmdpb     commands proposed through a region's log
    280..319  raft_serverpb  store-to-store and on-disk region metadata
    320..339  debugpb        a store's status for tools and tests
    9000..    tests only

A new module takes the next free block and adds a line here; the codec tests
check that no two modules share a block.

Importing the package registers raftpb, metapb and errorpb, so any decoder
knows every shared type.
"""

from kvproto import errorpb, metapb, raftpb

__all__ = ["errorpb", "metapb", "raftpb"]
