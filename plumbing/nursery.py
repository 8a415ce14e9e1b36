"""A nursery for the background tasks of a block, whose own error leaves as itself.

A context manager that keeps tasks running for the length of its ``async
with`` block (a connection's reader, a client's connections, a test
server) opens a nursery around the block it yields to. Under trio's strict
exception groups (the default since trio 0.25) anything the block raises
then leaves wrapped in an ExceptionGroup, so ``except KeyError`` around the
block stops matching. `open_background_nursery` gives the block's own error
back as itself.

It unwraps only what cannot be several errors, as trio's documentation
advises ("Designing for multiple errors"): the block's exception when no
background task failed. A failed background task leaves as trio's
ExceptionGroup, holding every error, the block's too; so do BaseExceptions
of the block (KeyboardInterrupt; a Cancelled is trio's business).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["open_background_nursery"]


@asynccontextmanager
async def open_background_nursery() -> AsyncIterator[trio.Nursery]:
    """``async with open_background_nursery() as nursery``: a trio nursery
    (exactly as ``trio.open_nursery()``: the block waits for its tasks at
    the end, an error cancels them), except that an Exception raised by the
    block leaves as itself, once the tasks have finished, if none of them
    failed.
    """
    block_error: Exception | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except Exception as e:
                # Kept out of the nursery, which would wrap it in a group
                # (and put a copy of a group the block raised in it).
                block_error = e
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if block_error is None:
            raise
        # Several errors after all: the block's joins the tasks' group.
        raise group.derive([block_error, *group.exceptions]) from None
    if block_error is not None:
        raise block_error
