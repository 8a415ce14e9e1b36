"""The workload of the whole-cluster simulation: every client runs one KV call
after another (of every kind, over a small key space, with values unique
per write so that the checker's explanations read well), each recorded in a
`History` for the linearizability checker, from `start()` until `stop()`;
then `read_every_key()`.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence

from client.errors import ClientError, UndeterminedError
from shardkv.check.history import (
    BatchDelete,
    BatchGet,
    BatchPut,
    Call,
    CompareAndSet,
    Delete,
    DeleteRange,
    Get,
    GetAndPut,
    History,
    Outcome,
    Put,
    PutIfAbsent,
    Scan,
    describe_call,
)
from tests.sim.client import Op, SimClient
from tests.sim.world import World


class Workload:
    def __init__(
        self,
        world: World,
        clients: Sequence[SimClient],
        keyspace: Sequence[bytes],
        calls: str,
        readers: int = 0,
        values: str = "unique",
    ) -> None:
        """`calls`: "all" kinds of calls, or only reads and "conditional"
        writes; the last `readers` clients only read (they stay with the
        leader they know as long as it answers: no write tells them of
        another). `values`: "unique" per write, or "few" (three, so that a
        key often gets back a value it held before: a range can be equal at
        two points of the log with writes between them, which unique values
        never allow)."""
        self.world = world
        self.readers = (
            {c.client_id for c in clients[len(clients) - readers :]} if readers else set()
        )
        self.clients = clients
        self.keyspace = keyspace
        self.calls = calls
        self.values = values
        self.history = History(keyspace)
        self.outcomes: Counter[str] = Counter()
        # Errors no fault can cause (a bug in the store or the client).
        self.unexpected: list[str] = []
        self.running = 0
        self.active = False
        self._values = itertools.count(1)
        # No client starts a call before this (virtual) time: a lull, long
        # enough for idle regions to hibernate (store_node.hibernate).
        self.lull_until = 0.0

    def start(self) -> None:
        self.active = True
        for c in self.clients:
            self.world.at(self.world.rng.uniform(0, 0.1), self._next_op, c)

    def stop(self) -> None:
        """No new calls; those running go on to their end."""
        self.active = False

    def lull(self, seconds: float) -> None:
        """Every client pauses between calls until `seconds` from now."""
        self.lull_until = max(self.lull_until, self.world.now + seconds)

    def _next_op(self, client: SimClient) -> None:
        if not self.active:
            return
        rng = self.world.rng
        if self.world.now < self.lull_until:
            self.world.at(
                self.lull_until - self.world.now + rng.uniform(0, 0.05), self._next_op, client
            )
            return
        call, op = self._choose(client, rng.random())
        op_id = self.history.invoke(client.client_id, call, self.world.now)
        self.running += 1

        def done(result: object, error: ClientError | None) -> None:
            self.running -= 1
            self._record(op_id, call, result, error)
            self.world.at(rng.uniform(0, 0.01), self._next_op, client)

        client.run(op, done)

    def _record(self, op_id: int, call: Call, result: object, error: ClientError | None) -> None:
        now = self.world.now
        if error is None:
            self.history.complete(op_id, Outcome.OK, result, now)
            self.outcomes["ok"] += 1
        elif isinstance(error, UndeterminedError):
            self.history.complete(op_id, Outcome.UNKNOWN, None, now)
            self.outcomes["unknown"] += 1
        else:
            # DeadlineExceeded / PdUnavailable promise nothing was written;
            # the checker holds the client to it.
            self.history.complete(op_id, Outcome.FAILED, None, now)
            self.outcomes[f"failed ({type(error).__name__})"] += 1
            if type(error).__name__ in ("InvalidArgument", "StoreError", "ClusterMismatch"):
                self.unexpected.append(f"{describe_call(call)}: {error}")

    def _choose(self, client: SimClient, r: float) -> tuple[Call, Op[object]]:
        rng = self.world.rng
        ks = self.keyspace
        key = rng.choice(ks)
        if self.calls == "conditional" and 0.32 <= r < 0.70:
            r = rng.uniform(0.70, 1.0)
        if client.client_id in self.readers:
            r *= 0.32

        def value() -> bytes:
            if self.values == "few":
                return b"v%d" % rng.randrange(3)
            return b"c%d.%d" % (client.client_id, next(self._values))

        if r < 0.18:
            # Some reads are follower reads: linearizable too.
            follower = r < 0.06
            return Get(key, follower), client.get(key, follower)
        if r < 0.25:
            sample = rng.sample(ks, rng.randint(2, 4))
            follower = r < 0.20
            return BatchGet(tuple(sample), follower), client.batch_get(sample, follower)
        if r < 0.32:
            start, end = sorted(rng.sample([*ks, b"k99"], 2))
            if rng.random() < 0.2:
                end = b""
            limit = rng.randint(1, 8)
            reverse = rng.random() < 0.3
            return Scan(start, end, limit, reverse), client.scan(start, end, limit, reverse)
        if r < 0.50:
            v = value()
            return Put(key, v), client.put(key, v)
        if r < 0.57:
            pairs = {k: value() for k in rng.sample(ks, rng.randint(2, 4))}
            return BatchPut(tuple(sorted(pairs.items()))), client.batch_put(pairs)
        if r < 0.64:
            return Delete(key), client.delete(key)
        if r < 0.67:
            sample = rng.sample(ks, rng.randint(2, 3))
            return BatchDelete(tuple(sorted(sample))), client.batch_delete(sample)
        if r < 0.70:
            start, end = sorted(rng.sample(ks, 2))
            return DeleteRange(start, end), client.delete_range(start, end)
        if r < 0.84:
            expected = self._guess(key)
            new = value() if rng.random() < 0.9 else None
            return CompareAndSet(key, expected, new), client.compare_and_set(key, expected, new)
        if r < 0.92:
            v = value()
            return PutIfAbsent(key, v), client.put_if_absent(key, v)
        v = value()
        return GetAndPut(key, v), client.get_and_put(key, v)

    def _guess(self, key: bytes) -> bytes | None:
        """A value `key` may hold now: the latest one a completed call of
        the history wrote or read (so that compare-and-sets often succeed)."""
        rng = self.world.rng
        if rng.random() < 0.2:
            return None
        for op in reversed(self.history.operations()[-40:]):
            c = op.call
            if isinstance(c, Put) and c.key == key:
                return c.value
            if isinstance(c, Get) and c.key == key and op.outcome is Outcome.OK:
                return op.result if isinstance(op.result, bytes) else None
        return None

    def read_every_key(self) -> Callable[[], bool]:
        """Read every key once more (through the first client): the last
        word on what the store holds. Returns whether every read answered."""
        reader = self.clients[0]
        pending = len(self.keyspace)

        def read(key: bytes) -> None:
            op_id = self.history.invoke(reader.client_id, Get(key), self.world.now)

            def done(result: object, error: ClientError | None) -> None:
                nonlocal pending
                pending -= 1
                self._record(op_id, Get(key), result, error)
                if error is not None:
                    self.unexpected.append(f"final read of {key!r}: {error}")

            reader.run(reader.get(key), done)

        for key in self.keyspace:
            read(key)
        return lambda: pending == 0
