"""`shardkv ctl`: run a cluster through its PD's admin HTTP API.

    shardkv ctl [--pd-http URL] [--token-file FILE] [--json] [--timeout S] COMMAND ...

    cluster
    store list | show ID | offline ID | remove-tombstone [ID]
    region list | show ID | key KEY | store ID | check ID [--wait S] | checks [--state S]
    operator list | show REGION | remove REGION
    operator add transfer-leader REGION STORE | transfer-peer REGION FROM TO
                 | add-peer REGION STORE | remove-peer REGION STORE | split REGION KEY...
    scheduler list | add NAME [--store ID] | remove NAME | pause NAME SECONDS | resume NAME
    config show | set KEY VALUE
    backup --to DIR [--pd ADDRS]   (client.backup: over the PD and store RPC, not HTTP)

It speaks HTTP JSON only (`admin_http`), never the PD's code. Output:
tables and listings for people (`ctl_format`, pure), or with `--json` the
server's JSON as it came, for scripts. Exit status: 0 on success, 1 on
failure (one line on stderr: ``error: <the server's reason>``), 2 on a
usage error.

The printing is this module's job; what is printed is `ctl_format`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, quote_from_bytes, urlsplit

from client import backup
from client.admin_http import DEFAULT_TIMEOUT, AdminError, PdAdminClient, read_token
from client.ctl_check import check_status, wait_for_check
from client.ctl_format import FORMATS, format_config
from plumbing.cli import add_log_level_flag, configure_logging

__all__ = ["DEFAULT_PD_HTTP", "PD_HTTP_ENV", "add_parser", "run"]

PROG = "shardkv ctl"
PD_HTTP_ENV: Final = "SHARDKV_PD_HTTP"
DEFAULT_PD_HTTP: Final = "http://127.0.0.1:2380"  # `shardkv pd`'s default --http

DESCRIPTION = f"""\
Run a shardkv cluster through its PD's admin HTTP API: look at stores,
regions and operators, drain and remove stores, move replicas and leaders,
split regions, manage schedulers and change the cluster config.

  shardkv ctl store list
  shardkv ctl region key user42
  shardkv ctl operator add transfer-leader 2 5
  shardkv ctl store offline 4
  shardkv ctl --json config show

The PD's HTTP address comes from --pd-http, else ${PD_HTTP_ENV}, else
{DEFAULT_PD_HTTP} (`shardkv playground` prints its own). A PD started with
--admin-token-file takes orders (anything but a read) only with its token:
give the same file with --token-file. Flags go before the command; --json
may also follow it. Exit status: 0 on success, 1 on failure (one line on
stderr: "error: ..."), 2 on a usage error.
"""


class UsageError(Exception):
    """A bad argument found after parsing: exit status 2."""


@dataclass(frozen=True, slots=True)
class Call:
    """One admin API call: method, path under /pd/api/v1 (escaped), body,
    query."""

    method: str
    path: str
    body: object = None
    query: dict[str, object] = field(default_factory=dict)
    # Calls after the first: given its answer, the document to show.
    follow: Callable[[PdAdminClient, Any], Any] | None = None


# A command: the call it makes from its arguments, and what it prints of
# the answer for people.
Request = Callable[[argparse.Namespace], Call]
Show = Callable[[argparse.Namespace, Any], str]


def _doc(kind: str) -> Show:
    return lambda args, doc: FORMATS[kind](doc)


# -- arguments ---------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _key_bytes(args: argparse.Namespace, text: str) -> bytes:
    if not args.hex:
        return text.encode("utf-8", "surrogateescape")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"KEY is not hex: {text!r}") from None


def _key_json(args: argparse.Namespace, text: str) -> dict[str, str]:
    """A key as the API takes it: {"text": ...}, or {"hex": ...} with --hex."""
    if args.hex:
        return {"hex": _key_bytes(args, text).hex()}
    return {"text": text}


def pd_http_url(text: str) -> str:
    """The admin API's base URL: "http://HOST:PORT" (the scheme may be
    left out). UsageError if it is not one."""
    url = text if "://" in text else f"http://{text}"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise UsageError(f"--pd-http must be http://HOST:PORT, got {text!r}")
    return f"{parts.scheme}://{parts.netloc}"


# -- the parser ---------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `ctl` sub-command (its `run` is the parser's default)."""
    p = subparsers.add_parser(
        "ctl",
        help="run the cluster through the PD's admin API",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--pd-http",
        default=os.environ.get(PD_HTTP_ENV) or DEFAULT_PD_HTTP,
        metavar="URL",
        help=f"the PD's admin HTTP address (default: ${PD_HTTP_ENV}, else {DEFAULT_PD_HTTP})",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the PD's admin token (its --admin-token-file), for orders",
    )
    p.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="PEM CA an https:// PD is checked against (a PD run with --tls-cert-file)",
    )
    p.add_argument("--json", action="store_true", help="print the server's JSON, for scripts")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="how long to wait for the PD's answer (default: %(default)s)",
    )
    add_log_level_flag(p, default="warning")
    p.set_defaults(run=run)
    groups = p.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)
    _add_cluster(groups)
    _add_store(groups)
    _add_region(groups)
    _add_operator(groups)
    _add_scheduler(groups)
    _add_config(groups)
    backup.add_parser(groups)


# `--json` after the command too; SUPPRESS keeps the global flag's value
# when it is not given there.
_JSON_AFTER = argparse.ArgumentParser(add_help=False)
_JSON_AFTER.add_argument(
    "--json", action="store_true", default=argparse.SUPPRESS, help="print the server's JSON"
)


def _group(
    groups: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, desc: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    g = groups.add_parser(
        name, help=help, description=desc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return g.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def _leaf(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    request: Request,
    show: Show,
    desc: str | None = None,
) -> argparse.ArgumentParser:
    leaf = sub.add_parser(
        name,
        help=help,
        description=desc or help[0].upper() + help[1:] + ".",
        parents=[_JSON_AFTER],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    leaf.set_defaults(request=request, show=show)
    return leaf


def _add_cluster(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _leaf(
        groups,
        "cluster",
        "show the cluster: id, bootstrap state, store and region counts",
        lambda a: Call("GET", "/cluster"),
        _doc("cluster"),
    )


def _add_store(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = _group(
        groups,
        "store",
        "list, show, drain and remove stores",
        "Stores: Up, Disconnected and Down follow from their heartbeats; Offline (being\n"
        "drained) and Tombstone (empty, removed) are set by an administrator.",
    )
    _leaf(sub, "list", "list the stores", lambda a: Call("GET", "/stores"), _doc("stores"))
    show = _leaf(
        sub, "show", "show one store", lambda a: Call("GET", f"/store/{a.id}"), _doc("store")
    )
    show.add_argument("id", type=_positive, metavar="ID")
    offline = _leaf(
        sub,
        "offline",
        "drain a store (make it Offline)",
        lambda a: Call("DELETE", f"/store/{a.id}"),
        _show_offline,
        desc="Make a store Offline: its replicas are moved to other stores, and it becomes\n"
        "Tombstone once it holds none. Refused while fewer than max_replicas other\n"
        "stores are Up. `store show ID` follows it.",
    )
    offline.add_argument("id", type=_positive, metavar="ID")
    remove = _leaf(
        sub,
        "remove-tombstone",
        "take Tombstone stores off the store list",
        lambda a: Call("DELETE", "/stores/remove-tombstone", query={"store_id": a.id}),
        _doc("removed"),
        desc="Take a Tombstone store (or, without ID, every one) off the store list. Its id\n"
        "stays refused: its process cannot come back on its old data directory.",
    )
    remove.add_argument("id", type=_positive, metavar="ID", nargs="?")


def _show_offline(args: argparse.Namespace, doc: Any) -> str:
    return (
        f"store {doc['id']} is {doc['state']}: its replicas move to other stores, and it "
        f"becomes Tombstone once empty (follow it: {PROG} store show {doc['id']})"
    )


def _add_region(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = _group(
        groups,
        "region",
        "list and find regions",
        "Regions as the PD knows them from their leaders' heartbeats. Keys are\n"
        "shown as text, or as hex:<digits> when not printable.",
    )
    _leaf(sub, "list", "list every region", lambda a: Call("GET", "/regions"), _doc("regions"))
    show = _leaf(
        sub,
        "show",
        "show one region",
        lambda a: Call("GET", f"/region/id/{a.id}"),
        _doc("region"),
    )
    show.add_argument("id", type=_positive, metavar="ID")
    key = _leaf(
        sub,
        "key",
        "show the region holding a key",
        lambda a: Call("GET", "/region/key/" + quote_from_bytes(_key_bytes(a, a.key), safe="")),
        _doc("region"),
    )
    key.add_argument("key", metavar="KEY", help="the key, as text (or hex with --hex)")
    key.add_argument("--hex", action="store_true", help="KEY is hex")
    on_store = _leaf(
        sub,
        "store",
        "list the regions with a replica on a store",
        lambda a: Call("GET", f"/regions/store/{a.id}"),
        _doc("regions"),
    )
    on_store.add_argument("id", type=_positive, metavar="ID")
    check = _leaf(
        sub,
        "check",
        "check that a region's replicas hold the same data",
        lambda a: Call(
            "POST",
            "/regions/check",
            {"region_id": a.id},
            follow=lambda client, doc: wait_for_check(client, doc, a.wait),
        ),
        _doc("check"),
        desc="Order a consistency check of a region: every replica hashes its copy at\n"
        "the same applied index; the PD compares the digests. Waits until every replica\n"
        "answered (or --wait is over) and prints the verdict: match, or which stores\n"
        "differ. Exit status 0 on a match, 1 otherwise.",
    )
    check.add_argument("id", type=_positive, metavar="ID")
    check.add_argument(
        "--wait",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for every replica's answer (default: %(default)s)",
    )
    check.set_defaults(exit_status=check_status)
    checks = _leaf(
        sub,
        "checks",
        "list each region's latest consistency check",
        lambda a: Call("GET", "/regions/check", query={"state": a.state}),
        _doc("checks"),
    )
    checks.add_argument(
        "--state", choices=("requested", "pending", "match", "mismatch"), help="only these"
    )


def _add_operator(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = _group(
        groups,
        "operator",
        "list, start and cancel operators",
        "An operator is a short plan of steps for one region (at most one per region);\n"
        "the PD sends each step to the region's leader. Orders are answered once the\n"
        "operator is started: `operator show REGION` follows it.",
    )
    _leaf(
        sub,
        "list",
        "list running and recently finished operators",
        lambda a: Call("GET", "/operators"),
        _doc("operators"),
    )
    show = _leaf(
        sub,
        "show",
        "show a region's operator (running, else its latest)",
        lambda a: Call("GET", f"/operator/{a.region}"),
        _doc("operator"),
    )
    show.add_argument("region", type=_positive, metavar="REGION")
    remove = _leaf(
        sub,
        "remove",
        "cancel a region's running operator",
        lambda a: Call("DELETE", f"/operators/{a.region}"),
        lambda a, doc: f"canceled the {doc['desc']} operator of region {doc['region_id']}",
    )
    remove.add_argument("region", type=_positive, metavar="REGION")
    add = sub.add_parser(
        "add",
        help="start an operator",
        description="Start an operator on a region. Refused (with the reason) when the region\n"
        "already runs one, a target store is not Up, or a step would leave the region\n"
        "without a majority of healthy voters.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = add.add_subparsers(dest="operator_kind", metavar="KIND", required=True)
    # Name, help, and the store ids it takes: (field of the API's body, metavar).
    orders: list[tuple[str, str, tuple[tuple[str, str], ...]]] = [
        (
            "transfer-leader",
            "move the leadership to the region's voter on STORE",
            (("to_store_id", "STORE"),),
        ),
        (
            "transfer-peer",
            "move the region's replica from store FROM to store TO",
            (("from_store_id", "FROM"), ("to_store_id", "TO")),
        ),
        ("add-peer", "add a voter on STORE", (("store_id", "STORE"),)),
        ("remove-peer", "remove the region's replica on STORE", (("store_id", "STORE"),)),
    ]
    for name, help, stores in orders:
        fields = tuple(f for f, _ in stores)
        kind = _leaf(kinds, name, help, _operator_order(name, fields), _show_started)
        kind.add_argument("region", type=_positive, metavar="REGION")
        for store_field, metavar in stores:
            kind.add_argument(store_field, type=_positive, metavar=metavar)
    split = _leaf(
        kinds,
        "split",
        "split a region at keys",
        _split_order,
        _show_started,
        desc="Split a region at KEYs (text, or hex with --hex; strictly inside the region,\n"
        "increasing). Without KEY, the store splits it where its size scan says.",
    )
    split.add_argument("region", type=_positive, metavar="REGION")
    split.add_argument("keys", metavar="KEY", nargs="*")
    split.add_argument("--hex", action="store_true", help="KEYs are hex")


def _split_order(args: argparse.Namespace) -> Call:
    keys = [_key_json(args, k) for k in args.keys]
    return Call(
        "POST", "/operators", {"name": "split-region", "region_id": args.region, "keys": keys}
    )


def _operator_order(name: str, stores: Sequence[str]) -> Request:
    def request(args: argparse.Namespace) -> Call:
        body = {"name": name, "region_id": args.region}
        body.update({f: getattr(args, f) for f in stores})
        return Call("POST", "/operators", body)

    return request


def _show_started(args: argparse.Namespace, doc: Any) -> str:
    steps = "\n".join(f"  {i}. {s['description']}" for i, s in enumerate(doc["steps"], start=1))
    return (
        f"started {doc['desc']} on region {doc['region_id']}:\n{steps}\n"
        f"follow it: {PROG} operator show {doc['region_id']}"
    )


def _add_scheduler(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = _group(
        groups,
        "scheduler",
        "list, add, remove and pause schedulers",
        "Schedulers balance the cluster (balance-leader and balance-region, on by\n"
        "default) or empty a store of leaders before maintenance (add evict-leader\n"
        "--store ID: it is named evict-leader-ID). A paused scheduler resumes by itself\n"
        "after SECONDS, or with resume.",
    )
    _leaf(
        sub,
        "list",
        "list the schedulers",
        lambda a: Call("GET", "/schedulers"),
        _doc("schedulers"),
    )
    add = _leaf(
        sub,
        "add",
        "add a scheduler",
        lambda a: Call(
            "POST",
            "/schedulers",
            {"name": a.name} if a.store is None else {"name": a.name, "store_id": a.store},
        ),
        lambda a, doc: f"added scheduler {_scheduler_name(a, doc)}",
    )
    add.add_argument(
        "name", metavar="NAME", help="e.g. balance-leader, balance-region, evict-leader"
    )
    add.add_argument("--store", type=_positive, metavar="ID", help="the store (evict-leader)")
    remove = _leaf(
        sub,
        "remove",
        "remove a scheduler",
        lambda a: Call("DELETE", f"/schedulers/{quote(a.name, safe='')}"),
        lambda a, doc: f"removed scheduler {_scheduler_name(a, doc)}",
    )
    remove.add_argument("name", metavar="NAME")
    pause = _leaf(
        sub,
        "pause",
        "pause a scheduler for SECONDS",
        lambda a: Call("POST", f"/schedulers/{quote(a.name, safe='')}", {"delay": a.seconds}),
        lambda a, doc: f"paused scheduler {_scheduler_name(a, doc)} for {a.seconds:g} s",
    )
    pause.add_argument("name", metavar="NAME")
    pause.add_argument("seconds", type=_seconds, metavar="SECONDS")
    resume = _leaf(
        sub,
        "resume",
        "resume a paused scheduler",
        lambda a: Call("POST", f"/schedulers/{quote(a.name, safe='')}", {"delay": 0}),
        lambda a, doc: f"resumed scheduler {_scheduler_name(a, doc)}",
    )
    resume.add_argument("name", metavar="NAME")


def _scheduler_name(args: argparse.Namespace, doc: Any) -> str:
    """The name the PD gave it (evict-leader --store 4 is evict-leader-4)."""
    name = doc.get("name") if isinstance(doc, dict) else None
    return str(name or args.name)


def _add_config(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = _group(
        groups,
        "config",
        "show and change the cluster config",
        "The cluster config (stored by the PD; the keys of pd.toml but data_dir,\n"
        "listen, http and admin_token_file). Durations: 500ms, 20s, 30m, 1h; sizes:\n"
        "64KiB, 96MiB.",
    )
    _leaf(
        sub,
        "show",
        "show the cluster config (as pd.toml lines)",
        lambda a: Call("GET", "/config"),
        _doc("config"),
    )
    set_ = _leaf(
        sub,
        "set",
        "change one config key",
        lambda a: Call("POST", "/config", {a.key: a.value}),
        lambda a, doc: format_config({a.key: doc[a.key]}),
    )
    set_.add_argument("key", metavar="KEY", help="e.g. max_replicas")
    set_.add_argument("value", metavar="VALUE", help="e.g. 5, 30m, 96MiB")


# -- running -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run a parsed `ctl` command; returns the exit status."""
    configure_logging(args.log_level, log_format=args.log_format)
    try:
        url = pd_http_url(args.pd_http)
        call = args.request(args)
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    try:
        token = None if args.token_file is None else read_token(args.token_file)
        client = PdAdminClient(url, token=token, timeout=args.timeout, tls_ca=args.tls_ca)
        doc = client.call(call.method, call.path, body=call.body, query=call.query)
        if call.follow is not None:
            doc = call.follow(client, doc)
        text = json.dumps(doc, indent=2) if args.json else _shown(args, doc)
    except AdminError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # The reader left (`| head`, `| grep -q`): no traceback, and none
        # at exit either, when Python flushes stdout again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    exit_status: Callable[[Any], int] | None = getattr(args, "exit_status", None)
    return 0 if exit_status is None else exit_status(doc)


def _shown(args: argparse.Namespace, doc: Any) -> str:
    try:
        text: str = args.show(args, doc)
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        # A PD of another version: say so rather than print a traceback.
        raise AdminError(
            f"the PD's answer is not what this shardkv ctl expects ({type(e).__name__}: {e}); "
            "--json prints it as it came"
        ) from None
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """A stand-alone `shardkv ctl`; also `python -m client.ctl`."""
    parser = argparse.ArgumentParser(prog="shardkv")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_parser(subparsers)
    args = parser.parse_args(["ctl", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
