"""What `shardkv ctl` prints for people: the admin API's JSON documents as
aligned tables and ``name: value`` listings. Pure: a document in, text out
(no I/O); `--json` bypasses all of it.

Keys are shown as text when they are printable UTF-8 without tabs or line
breaks, else as ``hex:`` and their hex digits (as `shardkv kv` shows them);
the first region starts at ``(min)`` and the last ends at ``(max)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "FORMATS",
    "format_check",
    "format_checks",
    "format_cluster",
    "format_config",
    "format_operator",
    "format_operators",
    "format_region",
    "format_regions",
    "format_removed",
    "format_schedulers",
    "format_store",
    "format_stores",
    "show_key",
    "table",
]

Doc = Mapping[str, Any]


# -- building blocks -------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, a header line first; "(none)"
    under the header when there are no rows."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines = [line(headers), *(line(r) for r in rows)]
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)


def listing(pairs: Sequence[tuple[str, str]]) -> str:
    """``name: value`` lines, the values aligned."""
    width = max((len(name) for name, _ in pairs), default=0) + 1
    return "\n".join(f"{name + ':':<{width}} {value}".rstrip() for name, value in pairs)


def show_key(key: Doc | None, *, empty: str = '""') -> str:
    """A key document ({"hex", "text"}) for people; `empty` for b""."""
    if key is None:
        return "-"
    if not key["hex"]:
        return empty
    text = key.get("text")
    if text is None or not text.isprintable() or text.startswith("hex:"):
        return "hex:" + str(key["hex"])
    return str(text)


def size(n: int | None) -> str:
    """Bytes, rounded for reading (the exact numbers are in --json)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def seconds(value: float | None, *, never: str = "never") -> str:
    return never if value is None else f"{value:.1f}s"


def peer(p: Doc) -> str:
    role = "" if p["role"] == "voter" else f" ({p['role']})"
    return f"{p['id']}@s{p['store_id']}{role}"


# -- documents --------------------------------------------------------------------------


def format_cluster(doc: Doc) -> str:
    return listing(
        [
            ("cluster id", str(doc["cluster_id"])),
            ("bootstrapped", "yes" if doc["bootstrapped"] else "no"),
            ("stores", str(doc["store_count"])),
            ("regions", str(doc["region_count"])),
            ("max replicas", str(doc["max_replicas"])),
        ]
    )


def _store_row(s: Doc) -> list[str]:
    stats = s.get("stats") or {}
    labels = ",".join(f"{k}={v}" for k, v in sorted(s.get("labels", {}).items()))
    return [
        str(s["id"]),
        s["address"],
        s["state"],
        str(stats.get("region_count", "-")),
        str(stats.get("leader_count", "-")),
        size(stats.get("capacity")),
        size(stats.get("available")),
        seconds(s.get("seconds_since_heartbeat")),
        labels or "-",
    ]


_STORE_HEADERS = (
    "ID",
    "ADDRESS",
    "STATE",
    "REGIONS",
    "LEADERS",
    "CAPACITY",
    "AVAILABLE",
    "HEARTBEAT",
    "LABELS",
)


def format_stores(doc: Doc) -> str:
    return table(_STORE_HEADERS, [_store_row(s) for s in doc["stores"]])


def format_store(doc: Doc) -> str:
    stats = doc.get("stats") or {}
    flow = doc.get("leader_flow") or {}
    row = dict(zip(_STORE_HEADERS, _store_row(doc), strict=True))
    heartbeat = row["HEARTBEAT"]
    return listing(
        [
            ("id", row["ID"]),
            ("address", row["ADDRESS"]),
            ("state", row["STATE"]),
            ("labels", row["LABELS"]),
            ("regions", row["REGIONS"]),
            ("leaders", row["LEADERS"]),
            ("capacity", row["CAPACITY"]),
            ("available", row["AVAILABLE"]),
            ("used", size(stats.get("used_size"))),
            ("snapshots", _snapshots(stats)),
            ("busy", "yes" if stats.get("is_busy") else "no"),
            ("leaders' writes", _rate(flow, "write")),
            ("leaders' reads", _rate(flow, "read")),
            ("last heartbeat", heartbeat if heartbeat == "never" else f"{heartbeat} ago"),
            *_replacement(doc),
        ]
    )


def _replacement(doc: Doc) -> list[tuple[str, str]]:
    """Rows for a store whose data was lost and the store in its place."""
    rows = []
    if doc.get("replaces") is not None:
        rows.append(("replaces", f"store {doc['replaces']}"))
    if doc.get("replaced_by") is not None:
        rows.append(("replaced by", f"store {doc['replaced_by']}"))
    return rows


def _snapshots(stats: Doc) -> str:
    if not stats:
        return "-"
    return (
        f"{stats['sending_snap_count']} sending, {stats['receiving_snap_count']} receiving, "
        f"{stats['applying_snap_count']} applying"
    )


def _rate(flow: Doc, what: str) -> str:
    if not flow:
        return "-"
    return f"{flow[f'{what}_keys_rate']:.1f} keys/s, {size(int(flow[f'{what}_bytes_rate']))}/s"


def _region_row(r: Doc) -> list[str]:
    leader = r.get("leader")
    return [
        str(r["id"]),
        show_key(r["start_key"], empty="(min)"),
        show_key(r["end_key"], empty="(max)"),
        f"{r['epoch']['conf_ver']}/{r['epoch']['version']}",
        "-" if leader is None else f"s{leader['store_id']}",
        " ".join(peer(p) for p in r["peers"]),
        size(r.get("approximate_size")),
        str(r.get("approximate_keys", "-")),
    ]


_REGION_HEADERS = ("ID", "START", "END", "EPOCH", "LEADER", "PEERS", "SIZE", "KEYS")


def format_regions(doc: Doc) -> str:
    return table(_REGION_HEADERS, [_region_row(r) for r in doc["regions"]])


def format_region(doc: Doc) -> str:
    row = _region_row(doc)
    flow = doc.get("flow") or {}
    down = ", ".join(f"{peer(d['peer'])} for {d['down_seconds']}s" for d in doc["down_peers"])
    pending = ", ".join(peer(p) for p in doc["pending_peers"])
    return listing(
        [
            ("id", row[0]),
            ("range", f"[{row[1]}, {row[2]})"),
            ("epoch", f"conf_ver {doc['epoch']['conf_ver']}, version {doc['epoch']['version']}"),
            ("leader", "-" if doc.get("leader") is None else peer(doc["leader"])),
            ("term", str(doc.get("term", "-"))),
            ("peers", row[5]),
            ("down peers", down or "-"),
            ("pending peers", pending or "-"),
            ("size", f"{row[6]}, {row[7]} keys"),
            ("writes", _rate(flow, "write")),
            ("reads", _rate(flow, "read")),
            ("last heartbeat", seconds(doc.get("seconds_since_heartbeat")) + " ago"),
        ]
    )


def _progress(op: Doc) -> str:
    steps = op["steps"]
    current = op["current_step"]
    if current >= len(steps):
        return f"{len(steps)}/{len(steps)} done"
    return f"{current + 1}/{len(steps)}: {steps[current]['description']}"


_OPERATOR_HEADERS = ("REGION", "NAME", "BY", "STATUS", "STEP", "SECONDS")


def _operator_row(op: Doc) -> list[str]:
    return [
        str(op["region_id"]),
        op["desc"],
        op["kind"],
        op["status"],
        _progress(op) if op["status"] == "running" else op["reason"] or "-",
        f"{op['seconds_running']:.1f}",
    ]


def format_operators(doc: Doc) -> str:
    running = table(_OPERATOR_HEADERS, [_operator_row(op) for op in doc["operators"]])
    history = doc.get("history") or []
    if not history:
        return running
    finished = table(_OPERATOR_HEADERS, [_operator_row(op) for op in history])
    return f"running:\n{running}\n\nfinished (oldest first):\n{finished}"


def format_operator(doc: Doc) -> str:
    current = doc["current_step"]
    marks = []
    for i, step in enumerate(doc["steps"]):
        mark = "done" if i < current else "now " if i == current else "    "
        if i == current and doc["status"] != "running":
            mark = "stop"
        marks.append(f"  {mark}  {i + 1}. {step['description']}")
    pairs = [
        ("region", str(doc["region_id"])),
        ("operator", f"{doc['desc']} ({doc['kind']})"),
        ("status", doc["status"] + (f": {doc['reason']}" if doc.get("reason") else "")),
        ("running for", seconds(doc["seconds_running"])),
    ]
    if doc.get("seconds_since_finished") is not None:
        pairs.append(("finished", seconds(doc["seconds_since_finished"]) + " ago"))
    return listing(pairs) + "\nsteps:\n" + "\n".join(marks)


def format_schedulers(doc: Doc) -> str:
    """`paused_until` is the seconds until a paused scheduler resumes."""
    rows = [
        [
            s["name"],
            "-" if s.get("store_id") is None else str(s["store_id"]),
            seconds(s.get("paused_until"), never="-"),
            str(s.get("operators_created", "-")),
        ]
        for s in doc["schedulers"]
    ]
    return table(("NAME", "STORE", "RESUMES IN", "OPERATORS"), rows)


def format_config(doc: Doc) -> str:
    """As pd.toml lines: numbers as they are, durations and sizes quoted."""
    return "\n".join(f"{k} = {v if isinstance(v, int) else _quoted(v)}" for k, v in doc.items())


def _quoted(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def format_removed(doc: Doc) -> str:
    if not doc["removed"]:
        return "no Tombstone store to remove"
    return "\n".join(f"store {s['id']} ({s['address']}) removed" for s in doc["removed"])


# The formatter of each document kind, by the name the CLI uses.
def _stores(ids: Sequence[int]) -> str:
    return ("store " if len(ids) == 1 else "stores ") + ", ".join(map(str, ids))


def format_check(doc: Doc) -> str:
    """A consistency check: its verdict in one line, then each replica's
    digest (those outside the majority marked)."""
    head = f"region {doc['region_id']}: consistency check {doc['check_id']}"
    state = doc["state"]
    if state == "requested":
        return f"{head}: requested; no replica has answered yet"
    head += f" at applied index {doc['index']}"
    missing = doc["missing"]
    if state == "match":
        verdict = "match: every replica holds the same data"
    elif state == "mismatch":
        verdict = f"MISMATCH: {_stores(doc['differing'])} differ"
    else:
        verdict = "pending, alike so far"
    if missing:
        verdict += f"; no answer yet from {_stores(missing)}"
    differing = set(doc["differing"])
    rows = [
        [
            str(s["store_id"]),
            s["digest"] or "-",
            "differs" if s["store_id"] in differing else "",
        ]
        for s in doc["stores"]
    ]
    return f"{head}: {verdict}\n" + table(["STORE", "DIGEST", ""], rows)


def format_checks(doc: Doc) -> str:
    """Each region's latest consistency check."""
    rows = [
        [
            str(c["region_id"]),
            str(c["check_id"]),
            str(c["index"]),
            c["state"],
            ",".join(map(str, c["differing"])) or "-",
            ",".join(map(str, c["missing"])) or "-",
            seconds(c["reported_ago"]) + (" ago" if c["reported_ago"] is not None else ""),
        ]
        for c in doc["checks"]
    ]
    headers = ["REGION", "CHECK", "INDEX", "STATE", "DIFFERING", "MISSING", "REPORTED"]
    return table(headers, rows)


FORMATS: Mapping[str, Callable[[Doc], str]] = {
    "cluster": format_cluster,
    "stores": format_stores,
    "store": format_store,
    "regions": format_regions,
    "region": format_region,
    "operators": format_operators,
    "operator": format_operator,
    "schedulers": format_schedulers,
    "config": format_config,
    "removed": format_removed,
    "check": format_check,
    "checks": format_checks,
}
