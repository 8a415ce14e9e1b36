"""placement_driver: the PD process (cluster metadata, persistence, admin API).

The pure core (no trio, no clock, no sockets):

* `config`: start-up options and the cluster config (pd.toml, flags, RPC).
* `region_tree`: regions by start key, no overlaps.
* `id_alloc`: cluster-unique ids persisted in blocks ahead of use.
* `stores`: stores, their state machine (Up / Disconnected / Down ...)
  and lifecycle (joining, heartbeats, decommissioning, burying).
* `regions`: the region tree with what each leader last reported; region
  heartbeats and their staleness rules, batch splits, flushing.
* `cluster`: the facade over stores and regions, with bootstrap, ids and
  the cluster config.
* `operators`: operators and their steps (add learner, promote, remove,
  joint change, transfer leader, split), each step done by a check on the
  region its leader reports.
* `region_check`: what the replica checker and the schedulers judge alike
  (stores fit for a peer, peer health, the quorum simulation, moving a
  voter), and `OpInfluence`.
* `replica_checker`: region -> the operator bringing it to `max_replicas`
  healthy voters (or None).
* `operator_controller`: one operator per region, limits, delivery in
  region heartbeat responses, timeouts, history, the periodic patrol.
* `schedule_context`, `balance_leader`, `balance_region`, `evict_leader`:
  the schedulers, proposing operators over one run's cluster view;
  `schedulers`: the active set, pauses, counters, a run, the API documents.
* `service`: pdpb requests -> cluster calls -> pdpb responses.
* `storage`: the `MetaStorage` seam, LMDB and in-memory implementations.
* `http_api`: the admin HTTP API as a small ASGI app.

The trio shell: `server.PdServer`; `testing.open_pd` runs one in-process;
`cli` is `shardkv pd`.
"""

from kvproto import pdpb as _pdpb  # registers the PD messages with the codec

del _pdpb
