"""Clients in the simulation: the client library's pure cores (the region
cache, the retry policy and its verdict on each answer, the session that
numbers writes, the scan cursor and the batch plan) driven by the
simulation instead of trio.

Each operation is a generator that yields what it waits for (`Call` a store,
`AskPd`, `Sleep`) and is resumed with the outcome; `SimClient.run` drives
one at a time on the simulation's clock. The flow is the trio client's
(`client.rawkv`): locate the region (cache, else the PD), choose a peer, send
one attempt, let `client.retry.judge` decide, back off; writes carry the
session's number for their call. Batch groups are sent one after the other
rather than concurrently (the simulation looks at outcomes, not speed).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from client import retry
from client.cache import CachedRegion, RegionCache
from client.errors import ClientError
from client.plan import (
    ScanCursor,
    clip,
    end_in_region,
    holds_keys_before,
    own_numbers,
)
from client.retry import Answer, Attempts, Decision, GiveUp, OpKind, Retry
from client.session import Session
from kvproto import kvrpcpb as kv
from kvproto import pdpb
from plumbing.batches import chunks
from tests.sim.pd import SimPd
from tests.sim.store import SimStore
from tests.sim.world import Net, World

T = TypeVar("T")
A = TypeVar("A", bound=Answer)

TIMEOUT = 5.0
ATTEMPT_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class Call:
    store_id: int
    request: object
    timeout: float


@dataclass(frozen=True, slots=True)
class AskPd:
    request: object


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


Effect = Call | AskPd | Sleep
Op = Generator[Effect, object, T]
# Sorted keys [lo, hi) in one region.
Group = tuple[CachedRegion, int, int]
Pair = tuple[bytes, bytes]


class SimClient:
    def __init__(
        self,
        world: World,
        net: Net,
        pd: SimPd,
        stores: dict[int, SimStore],
        client_id: int,
        *,
        exactly_once: bool = True,
        timeout: float = TIMEOUT,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        batch_max_keys: int = 1 << 30,
    ) -> None:
        self.world = world
        self.net = net
        self.pd = pd
        self.stores = stores
        self.client_id = client_id
        self.name = f"c{client_id}"
        self.exactly_once = exactly_once
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        # A batch's keys in a region go in chunks of at most this many
        # (`plumbing.batches.chunks`, as ClientConfig.batch_max_keys).
        self.batch_max_keys = batch_max_keys
        self.rng = random.Random(world.rng.getrandbits(64))
        self.cache = RegionCache()
        self._session: Session | None = None
        # Learnt at the simulation's bootstrap (a real client asks the PD
        # first, `PdClient`): every PD request names it.
        self.cluster_id = 0

    # -- driving ---------------------------------------------------------------------

    def run(self, op: Op[T], done: Callable[[T | None, ClientError | None], None]) -> None:
        """Run `op` to its end; `done(result, None)` or `done(None, error)`."""
        self._resume(op, None, done)

    def _resume(
        self, op: Op[T], value: object, done: Callable[[T | None, ClientError | None], None]
    ) -> None:
        try:
            effect = op.send(value)
        except StopIteration as stop:
            done(stop.value, None)
            return
        except ClientError as e:
            done(None, e)
            return
        if isinstance(effect, Sleep):
            self.world.at(effect.seconds, self._resume, op, None, done)
        elif isinstance(effect, Call):
            store = self.stores[effect.store_id]
            self.net.call(
                self.name,
                store.name,
                store,
                effect.request,
                effect.timeout,
                lambda outcome: self._resume(op, outcome, done),
            )
        else:
            self.pd.call(effect.request, lambda resp: self._resume(op, resp, done))

    # -- the building blocks (client.rawkv's flow) ----------------------------------------

    def _attempts(self, what: str, kind: OpKind, any_replica: bool = False) -> Attempts:
        att = Attempts(
            what,
            kind,
            self.world.now + self.timeout,
            self.timeout,
            self.rng,
            attempt_timeout=self.attempt_timeout,
        )
        att.any_replica = any_replica
        return att

    def _session_for_write(self) -> Session | None:
        if not self.exactly_once:
            return None
        if self._session is None:
            self._session = Session.open(self.rng, self.world.wall_ms())
        return self._session

    def _wait(self, att: Attempts, decision: Decision) -> Op[None]:
        if isinstance(decision, Retry) and decision.renew_session:
            att.end_request()
            self._session = None
            att.begin_request(self._session_for_write())
        delay = att.plan(decision, self.world.now)
        if delay > 0:
            yield Sleep(delay)

    def _ask_pd(self, att: Attempts, request: object) -> Op[Any]:
        while True:
            att.check(self.world.now)
            resp = yield AskPd(request)
            header = getattr(resp, "header", None)
            if resp is not None and (header is None or header.error is None):
                return resp
            cause = "unreachable" if resp is None else str(header.error if header else resp)
            yield from self._wait(att, retry.on_pd_error(cause, att))

    def _locate(self, att: Attempts, key: bytes) -> Op[CachedRegion]:
        while True:
            entry = self.cache.lookup(key)
            if entry is not None:
                return entry
            req = pdpb.GetRegionRequest(pdpb.RequestHeader(self.cluster_id), key)
            resp = yield from self._ask_pd(att, req)
            region, leader = resp.region, resp.leader
            if region is None or not region.contains(key):
                yield from self._wait(att, retry.on_region_unknown(repr(key), att))
                continue
            if self.cache.insert(region, leader):
                continue
            return CachedRegion(region, leader)

    def _locate_before(self, att: Attempts, end: bytes, start: bytes) -> Op[CachedRegion]:
        while True:
            entry = self.cache.lookup_before(end)
            if entry is not None:
                return entry
            req = pdpb.ScanRegionsRequest(pdpb.RequestHeader(self.cluster_id), start, end, 0)
            resp = yield from self._ask_pd(att, req)
            for info in resp.regions:
                self.cache.insert(info.region, info.leader)
            entry = self.cache.lookup_before(end)
            if entry is not None:
                return entry
            for info in resp.regions:
                if holds_keys_before(info.region, end):
                    return CachedRegion(info.region, info.leader)
            yield from self._wait(att, retry.on_region_unknown(f"keys below {end!r}", att))

    def _call(
        self,
        att: Attempts,
        entry: CachedRegion,
        request_for: Callable[[kv.Context], object],
        ans: type[A],
    ) -> Op[A | None]:
        """One attempt, as `client.rawkv.Client._call`."""
        att.check(self.world.now)
        # The simulation keeps no suspects across calls.
        peer = retry.choose_peer(att, entry, ())
        if peer is None:
            yield from self._wait(att, retry.on_no_peer(self.cache, entry, att))
            return None
        if peer.store_id not in self.stores:
            why = "unknown to the PD"
            yield from self._wait(
                att, retry.on_store_unknown(self.cache, entry, peer.store_id, why, att)
            )
            return None
        ctx = kv.Context(entry.region.id, entry.region.epoch, peer)
        att.attempts += 1
        outcome = yield Call(peer.store_id, request_for(ctx), att.attempt_budget(self.world.now))
        verdict = retry.judge(self.cache, entry, peer, outcome, ans, att)
        if isinstance(verdict, Retry | GiveUp):
            yield from self._wait(att, verdict)
            return None
        return verdict

    def _single(
        self, att: Attempts, key: bytes, request_for: Callable[[kv.Context], object], ans: type[A]
    ) -> Op[A]:
        while True:
            entry = yield from self._locate(att, key)
            resp = yield from self._call(att, entry, request_for, ans)
            if resp is not None:
                return resp

    def _write(self, att: Attempts, body: Op[T]) -> Op[T]:
        """A write call as a numbered request of the session."""
        att.begin_request(self._session_for_write())
        try:
            return (yield from body)
        finally:
            att.end_request()

    def _groups(
        self, att: Attempts, keys: Sequence[bytes]
    ) -> Op[list[tuple[CachedRegion, int, int]]]:
        """Sorted `keys` cut by region: (region, lo, hi) runs."""
        out: list[Group] = []
        i = 0
        while i < len(keys):
            entry = yield from self._locate(att, keys[i])
            j = end_in_region(keys, i, entry.region)
            out.append((entry, i, j))
            i = j
        return out

    def _each_group(
        self,
        att: Attempts,
        keys: Sequence[bytes],
        send: Callable[[Attempts, CachedRegion, int, int], Op[bool]],
    ) -> Op[None]:
        """Send every group of sorted `keys` (cut by region, then in chunks
        of `batch_max_keys`), one after the other. A chunk of a region after
        its first, in a session, is a request of its own (the client's rule,
        `client.plan.own_numbers`)."""
        groups = [
            (e, c[0], c[-1] + 1)
            for e, lo, hi in (yield from self._groups(att, keys))
            for c in chunks(list(range(lo, hi)), self.batch_max_keys, 1 << 62, lambda _: 0)
        ]
        owns = own_numbers([e.region.id for e, _, _ in groups])
        for (entry, lo, hi), own in zip(groups, owns, strict=True):
            if not own or att.session is None:
                yield from self._send_group(att, entry, lo, hi, keys, send)
                continue
            child = att.child(att.what)
            child.begin_request(child.session)
            try:
                yield from self._send_group(child, entry, lo, hi, keys, send)
            finally:
                child.end_request()

    def _send_group(
        self,
        att: Attempts,
        entry: CachedRegion,
        lo: int,
        hi: int,
        keys: Sequence[bytes],
        send: Callable[[Attempts, CachedRegion, int, int], Op[bool]],
    ) -> Op[None]:
        """Send the group `keys[lo:hi]` until answered; one whose attempt
        failed (False) is cut again by the regions as now known."""
        pending = [(att, entry, lo, hi)]
        while pending:
            a, entry, lo, hi = pending.pop(0)
            if (yield from send(a, entry, lo, hi)):
                continue
            again = yield from self._groups(a, keys[lo:hi])
            # Each part of a group cut again has its own retry state.
            parts = [
                (a if len(again) == 1 else a.child(a.what), e, lo + x, lo + y) for e, x, y in again
            ]
            pending[:0] = parts

    # -- operations -----------------------------------------------------------------

    def get(self, key: bytes, follower: bool = False) -> Op[bytes | None]:
        """`follower`: a follower read (client.config.Consistency.FOLLOWER)."""
        att = self._attempts(f"get {key!r}", OpKind.READ, follower)
        mode = _mode(follower)
        resp = yield from self._single(
            att, key, lambda ctx: kv.RawGetRequest(ctx, key, mode), kv.RawGetResponse
        )
        return resp.value

    def batch_get(self, keys: Sequence[bytes], follower: bool = False) -> Op[dict[bytes, bytes]]:
        ks = sorted(set(keys))
        att = self._attempts(f"batch_get {len(ks)} keys", OpKind.READ, follower)
        mode = _mode(follower)
        found: dict[bytes, bytes] = {}

        def send(a: Attempts, entry: CachedRegion, lo: int, hi: int) -> Op[bool]:
            group = tuple(ks[lo:hi])
            resp = yield from self._call(
                a,
                entry,
                lambda ctx: kv.RawBatchGetRequest(ctx, group, mode),
                kv.RawBatchGetResponse,
            )
            if resp is None:
                return False
            found.update(resp.pairs)
            return True

        yield from self._each_group(att, ks, send)
        return found

    def scan(
        self, start: bytes, end: bytes, limit: int, reverse: bool
    ) -> Op[list[tuple[bytes, bytes]]]:
        att = self._attempts(f"scan [{start!r}, {end!r})", OpKind.READ)
        cursor = ScanCursor(start, end, reverse, False, page_size=3, remaining=limit)
        out: list[Pair] = []
        while not cursor.done:
            if cursor.reverse:
                entry = yield from self._locate_before(att, cursor.end, cursor.start)
            else:
                entry = yield from self._locate(att, cursor.start)
            lo, hi = cursor.page_range(entry.region)
            page = cursor.page_limit()
            request = partial(
                kv.RawScanRequest, start_key=lo, end_key=hi, limit=page, reverse=cursor.reverse
            )
            resp = yield from self._call(att, entry, request, kv.RawScanResponse)
            if resp is None:
                continue
            pairs = list(resp.pairs)
            cursor.advance(entry.region, pairs, page)
            out.extend(pairs)
        return out

    def put(self, key: bytes, value: bytes) -> Op[None]:
        att = self._attempts(f"put {key!r}", OpKind.WRITE)
        yield from self._write(
            att,
            self._single(
                att,
                key,
                lambda ctx: kv.RawPutRequest(ctx, key, value, att.session_ref()),
                kv.RawWriteResponse,
            ),
        )

    def delete(self, key: bytes) -> Op[None]:
        att = self._attempts(f"delete {key!r}", OpKind.WRITE)
        yield from self._write(
            att,
            self._single(
                att,
                key,
                lambda ctx: kv.RawDeleteRequest(ctx, key, att.session_ref()),
                kv.RawWriteResponse,
            ),
        )

    def batch_put(self, pairs: dict[bytes, bytes]) -> Op[None]:
        ordered = sorted(pairs.items())
        ks = [k for k, _ in ordered]
        att = self._attempts(f"batch_put {len(ks)} keys", OpKind.WRITE)

        def send(a: Attempts, entry: CachedRegion, lo: int, hi: int) -> Op[bool]:
            group = tuple(ordered[lo:hi])
            resp = yield from self._call(
                a,
                entry,
                lambda ctx: kv.RawBatchPutRequest(ctx, group, a.session_ref()),
                kv.RawWriteResponse,
            )
            return resp is not None

        yield from self._write(att, self._each_group(att, ks, send))

    def batch_delete(self, keys: Sequence[bytes]) -> Op[None]:
        ks = sorted(set(keys))
        att = self._attempts(f"batch_delete {len(ks)} keys", OpKind.WRITE)

        def send(a: Attempts, entry: CachedRegion, lo: int, hi: int) -> Op[bool]:
            group = tuple(ks[lo:hi])
            resp = yield from self._call(
                a,
                entry,
                lambda ctx: kv.RawBatchDeleteRequest(ctx, group, a.session_ref()),
                kv.RawWriteResponse,
            )
            return resp is not None

        yield from self._write(att, self._each_group(att, ks, send))

    def delete_range(self, start: bytes, end: bytes) -> Op[None]:
        att = self._attempts(f"delete_range [{start!r}, {end!r})", OpKind.WRITE)

        def body() -> Op[None]:
            cur = start
            while True:
                entry = yield from self._locate(att, cur)
                lo, hi = clip(entry.region, cur, end)
                resp = yield from self._call(
                    att, entry, partial(_delete_range, att, lo, hi), kv.RawWriteResponse
                )
                if resp is None:
                    continue
                r_end = entry.region.end_key
                if not r_end or (end and r_end >= end):
                    return
                cur = r_end

        yield from self._write(att, body())

    def _cas(
        self, att: Attempts, key: bytes, expected: bytes | None, new: bytes | None
    ) -> Op[tuple[bool, bytes | None]]:
        resp = yield from self._write(
            att,
            self._single(
                att,
                key,
                lambda ctx: kv.RawCompareAndSetRequest(ctx, key, expected, new, att.session_ref()),
                kv.RawCompareAndSetResponse,
            ),
        )
        return resp.succeeded, resp.previous

    def compare_and_set(
        self, key: bytes, expected: bytes | None, new: bytes | None
    ) -> Op[tuple[bool, bytes | None]]:
        att = self._attempts(f"compare_and_set {key!r}", OpKind.CONDITIONAL_WRITE)
        return (yield from self._cas(att, key, expected, new))

    def put_if_absent(self, key: bytes, value: bytes) -> Op[bytes | None]:
        att = self._attempts(f"put_if_absent {key!r}", OpKind.CONDITIONAL_WRITE)
        ok, previous = yield from self._cas(att, key, None, value)
        return None if ok else previous

    def get_and_put(self, key: bytes, value: bytes) -> Op[bytes | None]:
        att = self._attempts(f"get_and_put {key!r}", OpKind.CONDITIONAL_WRITE)
        expected: bytes | None = None
        while True:
            ok, previous = yield from self._cas(att, key, expected, value)
            if ok:
                return expected
            att.check(self.world.now)
            expected = previous


def _delete_range(
    att: Attempts, start: bytes, end: bytes, ctx: kv.Context
) -> kv.RawDeleteRangeRequest:
    return kv.RawDeleteRangeRequest(ctx, start, end, att.session_ref())


def _mode(follower: bool) -> kv.Consistency:
    return kv.Consistency.FOLLOWER if follower else kv.Consistency.STRONG
