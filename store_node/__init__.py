"""The store process: one LMDB engine, many Raft groups, one batched loop.

`StoreCore` (sans-IO) holds the peers and decides; `StoreNode` (trio) owns the
sockets, the ticker, the worker thread for LMDB writes and the PD worker.
"""
