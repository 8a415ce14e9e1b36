"""The clients of `shardkv chaos`: puts of unique values, deletes and reads
over a small set of keys, every call recorded in a `History` with its
invoke and completion times (a call cut off stays pending: the checker
counts it as unknown)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import trio

from client.errors import ClientError, UndeterminedError
from client.rawkv import Client
from shardkv.check.history import Delete, Get, History, Outcome, Put

__all__ = ["final_reads", "worker"]


async def worker(
    kv: Client,
    history: History,
    keys: list[bytes],
    cid: int,
    rng: random.Random,
    outcomes: Counter[str],
    t0: float,
) -> None:
    """One client, until cancelled."""
    n = 0
    while True:
        key = rng.choice(keys)
        r = rng.random()
        call: Any
        if r < 0.45:
            n += 1
            call = Put(key, b"c%d-%d" % (cid, n))
        elif r < 0.55:
            call = Delete(key)
        else:
            call = Get(key)
        op_id = history.invoke(cid, call, trio.current_time() - t0)
        try:
            result: object = None
            if isinstance(call, Put):
                await kv.put(call.key, call.value)
            elif isinstance(call, Delete):
                await kv.delete(call.key)
            else:
                result = await kv.get(call.key)
        except UndeterminedError:
            history.complete(op_id, Outcome.UNKNOWN, None, trio.current_time() - t0)
            outcomes[f"{type(call).__name__} unknown"] += 1
        except ClientError as e:
            history.complete(op_id, Outcome.FAILED, None, trio.current_time() - t0)
            outcomes[f"{type(call).__name__} failed ({type(e).__name__})"] += 1
        else:
            history.complete(op_id, Outcome.OK, result, trio.current_time() - t0)
            outcomes[f"{type(call).__name__} ok"] += 1


async def final_reads(kv: Client, history: History, keys: list[bytes], t0: float) -> None:
    """Every key read once more, after healing: part of the history."""
    for key in keys:
        op_id = history.invoke(-1, Get(key), trio.current_time() - t0)
        try:
            value = await kv.get(key, timeout=10.0)
        except ClientError:
            history.complete(op_id, Outcome.FAILED, None, trio.current_time() - t0)
            continue
        history.complete(op_id, Outcome.OK, value, trio.current_time() - t0)
