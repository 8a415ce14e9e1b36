"""`shardkv ctl region check ID`: order a consistency check of a region's
replicas through the PD's admin API (``POST /regions/check``), then poll
the check (``GET /region/id/ID/check?check_id=C``) until every replica has
answered or `--wait` is over. The verdict is the PD's (see
`placement_driver.consistency`); this module only waits for it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from client.admin_http import PdAdminClient

__all__ = ["answered", "check_status", "wait_for_check"]

# Seconds between two looks at the check.
POLL: Final = 0.25


def answered(doc: Any) -> bool:
    """Every replica of the region at the check's index has answered."""
    return bool(doc["state"] != "requested" and not doc["missing"])


def wait_for_check(
    client: PdAdminClient,
    doc: Any,
    wait: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """The check `doc` (as ordered) once every replica answered, or as it
    stands after `wait` seconds."""
    deadline = clock() + wait
    path = f"/region/id/{doc['region_id']}/check"
    while not answered(doc) and clock() < deadline:
        sleep(min(POLL, max(0.0, deadline - clock())))
        doc = client.call("GET", path, query={"check_id": doc["check_id"]})
    return doc


def check_status(doc: Any) -> int:
    """The exit status: 0 only when every replica answered alike."""
    return 0 if doc.get("state") == "match" and not doc.get("missing") else 1
