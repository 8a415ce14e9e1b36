"""The PD's admin HTTP API as the scaling benchmarks use it: the placement
of regions and leaders, whether the cluster is balanced, and pre-splitting
through split operators.

Not a benchmark itself (no printing: progress goes to a callback).

* `PdAdmin` reads `/pd/api/v1/stores`, `/regions`, `/config`, `/cluster`,
  `/schedulers` and posts `/regions/split` and `/schedulers/{name}` (pause)
  (httpx, on trio).
* `Placement` is one reading: the Up stores, every region's voters, other
  peers, leader and weight, and the tolerance the balance schedulers use.
  `Placement.unbalanced()` says what still keeps the cluster from being
  balanced the way the PD's schedulers judge it (None once it is): every
  region has its voters and no other peer, every expected store is Up, and
  no two Up stores differ by more than the tolerance in leaders (2 x ratio)
  or in region score (2 x ratio x the heaviest region's weight), where ratio
  is `tolerant_size_ratio` or, with 0, 1/200 of the most regions on one
  store, at least 1 (placement_driver/schedule_context.py).
* `split_at(pd, keys)` splits until every key is a region boundary: each
  round asks every region holding keys not yet boundaries to split at them
  (the first `MAX_SPLIT_KEYS` of them per request; the next round splits the
  last part further), then waits for the PD to see the splits; the balance
  schedulers are paused meanwhile (`POST /schedulers/{name}`).
* `scrape(http, url)` reads a /metrics page (a store's status port, the PD);
  `scrape_stores` every store's, and `activity` what the stores did between
  two of them (rounds, Raft messages, region heartbeats, fsyncs and their
  mean duration, per second and store).
* `wait_balanced(pd, ...)` polls until `unbalanced()` is None in two readings
  in a row, and says since when; or, with `stall`, until the placement has
  stopped changing short of balance.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import httpx
import trio

API: Final = "/pd/api/v1"
# The PD's MAX_SPLIT_COUNT: new regions per split request.
MAX_SPLIT_KEYS: Final = 1000
ADAPTIVE_TOLERANCE: Final = 1 / 200
MiB: Final = 1 << 20

Progress = Callable[[str], None]


def _key(doc: dict[str, Any]) -> bytes:
    return bytes.fromhex(doc["hex"])


@dataclass(frozen=True, slots=True)
class RegionInfo:
    id: int
    start_key: bytes
    end_key: bytes  # b"": +infinity
    voters: tuple[int, ...]  # store ids of its voters
    others: int  # learners and peers in a joint configuration
    leader_store: int | None
    weight: int  # what one peer adds to a store's region score

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RegionInfo:
        voters = tuple(p["store_id"] for p in doc["peers"] if p["role"] == "voter")
        leader = doc.get("leader")
        size = doc.get("approximate_size") or 0
        return cls(
            id=doc["id"],
            start_key=_key(doc["start_key"]),
            end_key=_key(doc["end_key"]),
            voters=voters,
            others=len(doc["peers"]) - len(voters),
            leader_store=None if leader is None else leader["store_id"],
            weight=max(1, round(size / MiB)),
        )

    def holds(self, key: bytes) -> bool:
        return self.start_key <= key and (not self.end_key or key < self.end_key)


@dataclass(frozen=True, slots=True)
class Placement:
    """One reading of the PD: its Up stores (id -> address), its regions in
    key order, and the configured tolerance ratio (0: adaptive)."""

    stores: dict[int, str]
    regions: list[RegionInfo]
    tolerant_size_ratio: float = 0.0

    def leaders(self) -> Counter[int]:
        """Regions led per Up store (0 for a store leading none)."""
        out: Counter[int] = Counter(dict.fromkeys(self.stores, 0))
        for r in self.regions:
            if r.leader_store in self.stores:
                out[r.leader_store] += 1
        return out

    def peers(self) -> Counter[int]:
        """Voters per Up store."""
        out: Counter[int] = Counter(dict.fromkeys(self.stores, 0))
        for r in self.regions:
            out.update(s for s in r.voters if s in self.stores)
        return out

    def scores(self) -> Counter[int]:
        """Region score per Up store: the weights of the regions with a
        voter there."""
        out: Counter[int] = Counter(dict.fromkeys(self.stores, 0))
        for r in self.regions:
            for s in r.voters:
                if s in self.stores:
                    out[s] += r.weight
        return out

    def ratio(self) -> float:
        if self.tolerant_size_ratio > 0:
            return self.tolerant_size_ratio
        return max(1.0, max(self.peers().values(), default=0) * ADAPTIVE_TOLERANCE)

    def unsettled(self, replicas: int, stores: int | None = None) -> str | None:
        """What keeps the cluster from being fully replicated with a known
        leader everywhere (`stores`: how many Up stores are expected), or
        None."""
        if stores is not None and len(self.stores) < stores:
            return f"{len(self.stores)} of {stores} stores up"
        short = [r for r in self.regions if len(r.voters) != replicas or r.others]
        if short:
            r = short[0]
            return (
                f"{len(short)} region(s) not at {replicas} voters and no other peer "
                f"(region {r.id}: {len(r.voters)} voters, {r.others} other)"
            )
        leaderless = sum(r.leader_store is None for r in self.regions)
        if leaderless:
            return f"{leaderless} region(s) without a known leader"
        return None

    def unbalanced(self, replicas: int, stores: int | None = None) -> str | None:
        """What keeps the cluster from being settled (`unsettled`) and
        balanced, or None."""
        why = self.unsettled(replicas, stores)
        if why is not None:
            return why
        if len(self.stores) < 2:
            return None
        margin = 2 * self.ratio()
        leaders = self.leaders().values()
        if max(leaders) - min(leaders) > margin:
            return f"leaders {self.describe_counts(self.leaders())} (tolerance {margin:g})"
        heaviest = max((r.weight for r in self.regions), default=1)
        scores = self.scores().values()
        if max(scores) - min(scores) > margin * heaviest:
            return f"region scores {self.describe_counts(self.scores())} (tolerance {margin:g})"
        return None

    def describe_counts(self, counts: Counter[int]) -> str:
        return "/".join(str(counts[s]) for s in sorted(self.stores))

    def summary(self) -> str:
        """ "regions 60, voters 36/36/36/36/36, leaders 12/12/12/12/12"."""
        return (
            f"{len(self.regions)} regions, voters {self.describe_counts(self.peers())}, "
            f"leaders {self.describe_counts(self.leaders())} (stores {sorted(self.stores)})"
        )


class PdAdmin:
    """The calls of the PD's admin API used here; `base` is the HTTP root
    (http://127.0.0.1:2380)."""

    def __init__(self, http: httpx.AsyncClient, base: str) -> None:
        self.http = http
        self.base = base.rstrip("/") + API

    async def get(self, path: str) -> Any:
        r = await self._send("GET", path)
        r.raise_for_status()
        return r.json()

    async def post(self, path: str, body: object) -> tuple[int, Any]:
        r = await self._send("POST", path, body)
        return r.status_code, r.json()

    async def _send(self, method: str, path: str, body: object = None) -> httpx.Response:
        # The server closes idle kept-alive connections: a request can meet
        # one closing. Try again on a fresh one (a repeated split order is
        # refused as a duplicate, 409, or as outside the region, 400).
        for attempt in range(3):
            try:
                return await self.http.request(method, self.base + path, json=body)
            except httpx.TransportError:
                if attempt == 2:
                    raise
                await trio.sleep(0.2)
        raise AssertionError("unreachable")

    async def up_stores(self) -> dict[int, str]:
        doc = await self.get("/stores")
        return {s["id"]: s["address"] for s in doc["stores"] if s["state"] == "Up"}

    async def regions(self) -> list[RegionInfo]:
        doc = await self.get("/regions")
        return [RegionInfo.from_json(r) for r in doc["regions"]]

    async def region_count(self) -> int:
        return int((await self.get("/cluster"))["region_count"])

    async def config(self) -> dict[str, Any]:
        return dict(await self.get("/config"))

    async def placement(self) -> Placement:
        config = await self.config()
        stores = await self.up_stores()
        regions = await self.regions()
        return Placement(stores, regions, float(config.get("tolerant_size_ratio", 0)))

    async def operators_created(self) -> dict[str, int]:
        """Operators started by each active scheduler since the PD started."""
        doc = await self.get("/schedulers")
        return {s["name"]: int(s["operators_created"]) for s in doc["schedulers"]}

    async def pause(self, scheduler: str, seconds: float) -> bool:
        """Pause an active scheduler that long (0: resume); False if it is
        not active."""
        status, _ = await self.post(f"/schedulers/{scheduler}", {"delay": seconds})
        return status == 200

    async def split(self, region_id: int, keys: Sequence[bytes]) -> tuple[int, str]:
        """Ask for a split operator: (HTTP status, the error or "")."""
        body = {"region_id": region_id, "keys": [{"hex": k.hex()} for k in keys]}
        status, doc = await self.post("/regions/split", body)
        return status, "" if status == 200 else str(doc.get("error", doc))


@asynccontextmanager
async def open_pd_admin(base: str, http_timeout: float = 60.0) -> AsyncIterator[PdAdmin]:
    async with httpx.AsyncClient(timeout=http_timeout) as http:
        yield PdAdmin(http, base)


BALANCE_SCHEDULERS: Final = ("balance-leader", "balance-region")


async def split_at(
    pd: PdAdmin,
    keys: Sequence[bytes],
    *,
    progress: Progress | None = None,
    per_request: int = MAX_SPLIT_KEYS,
    pause: Sequence[str] = BALANCE_SCHEDULERS,
    round_wait: float = 10.0,
    after_round: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Split regions until every one of `keys` starts a region; returns the
    number of split requests the PD took. Each round asks every region
    holding missing keys to split at the first `per_request` of them: the
    rest stay in the region's last part, which the next round splits again
    (so 9,999 keys in one region take 10 requests of 1,000, each one batch
    split on the stores), then waits until the PD's region count moves (at
    most `round_wait` seconds) before it lists the regions again. A region
    busy with an operator (409) or known to the PD under an older epoch is
    simply asked again in the next round. The schedulers in `pause` are
    paused meanwhile (their operators would hold regions the splits want)
    and resumed at the end. `after_round`, if given, is awaited after each
    round (pacing: regions.py waits for the new regions to sleep). Bound it
    from outside (a cancel scope)."""
    wanted = sorted(set(keys) - {b""})
    taken = 0
    said = ""
    limiter = trio.CapacityLimiter(8)

    async def ask(region_id: int, ks: list[bytes]) -> None:
        nonlocal taken
        async with limiter:
            status, _ = await pd.split(region_id, ks[:per_request])
        if status == 200:
            taken += 1

    paused = [name for name in pause if await pd.pause(name, 3600)]
    try:
        while True:
            regions = await pd.regions()
            starts = {r.start_key for r in regions}
            missing = [k for k in wanted if k not in starts]
            what = f"{len(regions):,} regions, {len(missing):,} split keys to go"
            if progress is not None and what != said:
                progress(what)
                said = what
            if not missing:
                return taken
            bounds = [r.start_key for r in regions]
            by_region: dict[int, list[bytes]] = {}
            for k in missing:
                region = regions[bisect.bisect_right(bounds, k) - 1]
                if region.holds(k):
                    by_region.setdefault(region.id, []).append(k)
            async with trio.open_nursery() as nursery:
                for region_id, ks in by_region.items():
                    nursery.start_soon(ask, region_id, ks)
            # Listing thousands of regions costs the PD (and this process):
            # wait for the count to move rather than poll the list.
            with trio.move_on_after(round_wait):
                while await pd.region_count() == len(regions):  # noqa: ASYNC110
                    await trio.sleep(0.2)
            await trio.sleep(0.5)  # the rest of the batch split reports
            if after_round is not None:
                await after_round()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            for name in paused:
                await pd.pause(name, 0)


@dataclass(frozen=True, slots=True)
class Balanced:
    """How `wait_balanced` ended: the last reading; when (time.perf_counter)
    the first of the balanced readings in a row was taken, or, if the
    placement stopped changing short of balance, when it last changed; and
    then what was still unbalanced (`stalled`, "" if balanced)."""

    placement: Placement
    since: float
    stalled: str = ""


def _shape(placement: Placement) -> tuple[object, ...]:
    """What a scheduler's move changes: the region count, voters and
    leaders per store."""
    return (
        len(placement.regions),
        tuple(sorted(placement.peers().items())),
        tuple(sorted(placement.leaders().items())),
    )


async def wait_balanced(
    pd: PdAdmin,
    replicas: int,
    *,
    stores: int | None = None,
    progress: Progress | None = None,
    on_reading: Callable[[float, Placement], None] | None = None,
    poll: float = 0.5,
    confirm: int = 2,
    balance: bool = True,
    stall: float | None = None,
) -> Balanced:
    """Poll until the cluster has been balanced (`Placement.unbalanced`; with
    `balance` False only settled, `Placement.unsettled`) in `confirm`
    readings in a row; `on_reading` sees every reading with its time. With
    `stall`, also stop once the cluster is settled but not balanced and the
    voters and leaders per store have not changed for `stall` seconds (the
    schedulers stopped short of the tolerance). Bound it from outside."""
    said = ""
    streak = 0
    since = 0.0
    shape: tuple[object, ...] = ()
    changed = time.perf_counter()
    while True:
        taken = time.perf_counter()
        placement = await pd.placement()
        if on_reading is not None:
            on_reading(taken, placement)
        if _shape(placement) != shape:
            shape, changed = _shape(placement), taken
        judge = placement.unbalanced if balance else placement.unsettled
        why = judge(replicas, stores)
        if why is None:
            if streak == 0:
                since = taken
            streak += 1
            if streak >= confirm:
                return Balanced(placement, since)
        else:
            streak = 0
            if progress is not None and why != said:
                progress(why)
                said = why
            if (
                stall is not None
                and taken - changed >= stall
                and placement.unsettled(replicas, stores) is None
            ):
                return Balanced(placement, changed, why)
        # Thousands of regions take the PD a while to list: poll less then.
        await trio.sleep(max(poll, time.perf_counter() - taken))


async def scrape(http: httpx.AsyncClient, url: str) -> dict[str, float]:
    """A Prometheus text page (a store's or the PD's /metrics) as
    {'name{labels}': value}; comments and histogram buckets left out."""
    r = await http.get(url)
    r.raise_for_status()
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if "_bucket{" not in name:
            out[name] = float(value)
    return out


# What a store did, from its /metrics: (label, counter) read before and
# after a measurement; `activity` turns them into rates.
STORE_COUNTERS: Final = (
    ("rounds/s", "shardkv_store_rounds_total"),
    ("raft msgs sent/s", "shardkv_store_raft_messages_sent_total"),
    ("region hb/s", 'shardkv_store_pd_heartbeat_seconds_count{kind="region"}'),
    ("fsyncs/s", "shardkv_store_raft_log_fsync_seconds_count"),
)
_FSYNC_SUM: Final = "shardkv_store_raft_log_fsync_seconds_sum"
_FSYNC_COUNT: Final = "shardkv_store_raft_log_fsync_seconds_count"


StoreSnapshot = dict[str, dict[str, float]]


async def scrape_stores(http: httpx.AsyncClient, status_urls: dict[str, str]) -> StoreSnapshot:
    """Every store's /metrics (`status_urls`: name -> http://host:port)."""
    return {name: await scrape(http, url + "/metrics") for name, url in status_urls.items()}


def activity(before: StoreSnapshot, after: StoreSnapshot, seconds: float) -> dict[str, float]:
    """Per store, averaged over the stores: the `STORE_COUNTERS` as rates
    per second, and "fsync ms", the mean duration of a synced raft/ write."""
    out: dict[str, float] = {}
    names = sorted(after)
    for label, metric in STORE_COUNTERS:
        rates = [(after[n].get(metric, 0) - before[n].get(metric, 0)) / seconds for n in names]
        out[label] = sum(rates) / len(rates) if rates else math.nan
    total = sum(after[n].get(_FSYNC_SUM, 0) - before[n].get(_FSYNC_SUM, 0) for n in names)
    count = sum(after[n].get(_FSYNC_COUNT, 0) - before[n].get(_FSYNC_COUNT, 0) for n in names)
    out["fsync ms"] = total / count * 1000 if count else math.nan
    return out
