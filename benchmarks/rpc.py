"""Benchmark of the wire: codec cost per message, and RPC throughput on one
loopback TCP connection.

The server runs in a separate process (multiprocessing, spawn) on an
ephemeral 127.0.0.1 port; the client runs here. Each measurement is repeated
(`--runs`) and reported as median, min and max:

* codec: µs to encode and decode a Raft APPEND of 64 entries of 100 bytes,
  and a small Echo;
* sequential: round trips per second, one call at a time;
* pipelined: requests per second with N calls in flight on the connection.

    python3 benchmarks/rpc.py --seconds 2
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import multiprocessing.connection
import statistics
import sys
import timeit
from collections.abc import Callable, Sequence

import trio

from kvproto import codec
from kvproto.rpc import Echo, RpcConnection, RpcServer, connect, echo_handler
from raft.types import Entry, Message, MessageType


def _serve(pipe: multiprocessing.connection.Connection) -> None:
    async def main() -> None:
        server = RpcServer({Echo: echo_handler}, max_concurrent_requests=1024)
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server.serve, "127.0.0.1", 0)
            pipe.send(f"{host}:{port}")
            # Serve until the parent closes its end of the pipe.
            with contextlib.suppress(EOFError):
                await trio.to_thread.run_sync(pipe.recv_bytes, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


def _codec_figures(runs: int) -> list[tuple[str, list[float]]]:
    entries = tuple(Entry(term=7, index=1000 + i, data=bytes(100)) for i in range(64))
    append = Message(
        MessageType.APPEND, to=2, from_=1, term=7, log_term=7, index=999, entries=entries
    )
    echo = Echo(b"x" * 16)
    cases: list[tuple[str, Callable[[], object]]] = []
    for name, msg in (("raft APPEND 64 x 100 B", append), ("Echo 16 B", echo)):
        data = codec.dumps(msg)
        cases += [
            (f"{name}: encode (dumps)", lambda msg=msg: codec.dumps(msg)),
            (f"{name}: decode (loads)", lambda data=data: codec.loads(data)),
            (f"{name}: encode + decode", lambda msg=msg: codec.loads(codec.dumps(msg))),
        ]
    results = []
    for label, fn in cases:
        number = 2000
        samples = [timeit.timeit(fn, number=number) / number * 1e6 for _ in range(runs)]
        results.append((label, samples))
    return results


async def _sequential(conn: RpcConnection, request: Echo, seconds: float) -> float:
    done = 0
    start = trio.current_time()
    deadline = start + seconds
    while trio.current_time() < deadline:
        await conn.call(request)
        done += 1
    return done / (trio.current_time() - start)


async def _pipelined(conn: RpcConnection, request: Echo, seconds: float, inflight: int) -> float:
    done = 0
    start = trio.current_time()
    deadline = start + seconds

    async def worker() -> None:
        nonlocal done
        while trio.current_time() < deadline:
            await conn.call(request)
            done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(inflight):
            nursery.start_soon(worker)
    return done / (trio.current_time() - start)


async def _rpc_figures(
    address: str, seconds: float, runs: int, inflights: Sequence[int], payload: int
) -> list[tuple[str, list[float]]]:
    request = Echo(b"x" * payload)
    results = []
    async with connect(address) as conn:
        await _sequential(conn, request, min(seconds, 0.5))  # warm up
        samples = [await _sequential(conn, request, seconds) for _ in range(runs)]
        results.append(("sequential round trips/s", samples))
        for n in inflights:
            samples = [await _pipelined(conn, request, seconds, n) for _ in range(runs)]
            results.append((f"pipelined, {n} in flight, requests/s", samples))
    return results


def _table(title: str, unit: str, rows: list[tuple[str, list[float]]]) -> str:
    width = max(len(label) for label, _ in rows)
    lines = [title, f"{'':{width}}  {'median':>12}  {'min':>12}  {'max':>12}  ({unit})"]
    for label, samples in rows:
        med, lo, hi = statistics.median(samples), min(samples), max(samples)
        lines.append(f"{label:{width}}  {med:12,.1f}  {lo:12,.1f}  {hi:12,.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="duration of one run (default 2)"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (default 5)")
    parser.add_argument(
        "--inflight",
        default="1,16,256",
        help="comma-separated calls in flight for the pipelined runs (default 1,16,256)",
    )
    parser.add_argument("--payload", type=int, default=16, help="Echo payload bytes (default 16)")
    parser.add_argument("--skip-codec", action="store_true", help="only run the RPC benchmark")
    args = parser.parse_args(argv)
    inflights = [int(n) for n in args.inflight.split(",") if n]

    if not args.skip_codec:
        print(_table(f"codec ({args.runs} runs)", "µs per message", _codec_figures(args.runs)))
        print()

    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child_end,), daemon=True)
    server.start()
    try:
        if not parent_end.poll(30):
            print("the server process did not start", file=sys.stderr)
            return 1
        address = parent_end.recv()
        rows = trio.run(_rpc_figures, address, args.seconds, args.runs, inflights, args.payload)
    finally:
        parent_end.close()
        server.join(timeout=10)
        if server.is_alive():
            server.terminate()
    title = (
        f"RPC over loopback TCP, one connection, Echo {args.payload} B, server in another "
        f"process ({args.runs} runs of {args.seconds:g} s)"
    )
    print(_table(title, "per second", rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
