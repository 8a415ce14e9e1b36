"""`shardkv kv`: read and write keys from the command line.

    shardkv kv --pd 127.0.0.1:2379 put KEY VALUE
    shardkv kv get [--consistency C] [--max-staleness SECONDS] KEY
    shardkv kv delete KEY
    shardkv kv scan [--start S] [--end E] [--limit N] [--reverse] [--keys-only]
                    [--consistency C] [--max-staleness SECONDS]

Keys and values are UTF-8 text on the command line, or hex with `--hex`.
`--consistency` is strong (the default: at the leader), follower (at any
replica, still linearizable) or stale (at any replica, at most
`--max-staleness` seconds old; how stale the answer may be is printed on
stderr after it). Output: `get` prints the value; `scan` prints one
``key<TAB>value`` line per pair. With `--hex` every field is printed as
hex; otherwise a field that is not printable as one text field (not
UTF-8, or holding a tab or a line break) is printed as ``hex:`` followed by
its hex digits.

Exit status: 0 on success, 1 on failure (a one-line error on stderr; `get`
of a key without a value is a failure), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import ssl
import sys
from collections.abc import Sequence

import trio

from client.config import DEFAULT_MAX_STALENESS, DEFAULT_TIMEOUT, Consistency
from client.errors import ClientError
from client.rawkv import connect
from kvproto.rpc import parse_address
from kvproto.rpc.tls import client_context
from plumbing.cli import add_log_level_flag, configure_logging
from plumbing.config_file import ConfigError, read_token_file

__all__ = ["add_parser", "main", "pd_addresses", "run"]

PROG = "shardkv kv"

DESCRIPTION = """\
Read and write keys of a shardkv cluster. Keys and values are UTF-8 text,
or hex with --hex. `scan` prints key<TAB>value lines; a field that is not
printable text is shown as hex:<hex digits>. Exit status: 0 on success, 1
on failure (including `get` of a missing key), 2 on a usage error.
"""


class UsageError(Exception):
    """A bad argument: exit status 2."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `kv` sub-command (its `run` is the parser's default)."""
    p = subparsers.add_parser(
        "kv",
        help="read and write keys",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--pd",
        default="127.0.0.1:2379",
        metavar="ADDRS",
        help="PD addresses, comma separated (default: %(default)s)",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the cluster's client token (or its cluster token), for a "
        "cluster run with --cluster-token-file",
    )
    p.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="PEM CA of a cluster run with TLS: the PD and the stores are checked against it",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="PEM client certificate, if asked for")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument(
        "--hex", action="store_true", help="keys and values are hex, in arguments and output"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="deadline of the command (default: %(default)s)",
    )
    add_log_level_flag(p, default="warning")
    sub = p.add_subparsers(dest="kv_command", metavar="COMMAND", required=True)
    put = sub.add_parser("put", help="set KEY to VALUE")
    put.add_argument("key", metavar="KEY")
    put.add_argument("value", metavar="VALUE")
    get = sub.add_parser("get", help="print the value of KEY")
    get.add_argument("key", metavar="KEY")
    _add_read_flags(get)
    delete = sub.add_parser("delete", help="delete KEY")
    delete.add_argument("key", metavar="KEY")
    scan = sub.add_parser("scan", help="print the pairs of [START, END)")
    scan.add_argument("--start", default="", metavar="S", help="first key (default: the first)")
    scan.add_argument("--end", default="", metavar="E", help="end key, excluded (default: none)")
    scan.add_argument(
        "--limit", type=int, default=100, metavar="N", help="at most N pairs (default: 100)"
    )
    scan.add_argument("--reverse", action="store_true", help="descending from END")
    scan.add_argument("--keys-only", action="store_true", help="print keys only")
    _add_read_flags(scan)
    p.set_defaults(run=run)


def _add_read_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--consistency",
        choices=[c.value for c in Consistency],
        default=Consistency.STRONG.value,
        help=(
            "strong: at the leader; follower: at any replica, linearizable too; "
            "stale: at any replica, maybe stale (default: %(default)s)"
        ),
    )
    p.add_argument(
        "--max-staleness",
        type=float,
        default=DEFAULT_MAX_STALENESS,
        metavar="SECONDS",
        help="how stale a stale read may be (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Run a parsed `kv` command; returns the exit status."""
    configure_logging(args.log_level, log_format=args.log_format)
    try:
        pd = pd_addresses(args.pd)
        if not args.timeout > 0:
            raise UsageError(f"--timeout must be positive, got {args.timeout}")
        try:
            token = read_token_file(args.token_file, "token") if args.token_file else None
        except ConfigError as e:
            raise UsageError(str(e)) from None
        if (args.tls_cert or args.tls_key) and not (args.tls_cert and args.tls_key and args.tls_ca):
            raise UsageError("--tls-cert and --tls-key go together, with --tls-ca")
        if args.tls_ca:
            try:  # the files are read again by the client; here, to say why they cannot be
                client_context(args.tls_ca, args.tls_cert, args.tls_key)
            except (OSError, ssl.SSLError) as e:
                raise UsageError(f"cannot load the TLS files: {e}") from None
        return trio.run(_run, args, pd, token)
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except ClientError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """A stand-alone `shardkv kv` (until the `shardkv` command dispatches to
    `add_parser`); also `python -m client.cli`."""
    parser = argparse.ArgumentParser(prog="shardkv")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_parser(subparsers)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


# --------------------------------------------------------------------------


def pd_addresses(text: str) -> list[str]:
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    if not addresses:
        raise UsageError("--pd needs at least one address")
    for a in addresses:
        try:
            parse_address(a)
        except ValueError as e:
            raise UsageError(f"--pd: {e}") from None
    return addresses


def _arg_bytes(args: argparse.Namespace, name: str, text: str) -> bytes:
    if not args.hex:
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates from the shell
            raise UsageError(f"{name} is not valid text: {e}") from None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"{name} is not hex: {text!r}") from None


def _show(data: bytes, hex_mode: bool) -> str:
    if hex_mode:
        return data.hex()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "hex:" + data.hex()
    if any(c in text for c in "\t\n\r") or text.startswith("hex:"):
        return "hex:" + data.hex()
    return text


def _check_read_flags(args: argparse.Namespace) -> None:
    m = args.max_staleness
    if not (m >= 0 and m != float("inf")):
        raise UsageError(f"--max-staleness must be a non-negative number of seconds, got {m}")


def _note_staleness(args: argparse.Namespace, staleness: float) -> None:
    """A stale read says on stderr how stale its answer may be."""
    if args.consistency == Consistency.STALE:
        print(f"{PROG}: stale by at most {staleness:.3f} s", file=sys.stderr)


async def _run(args: argparse.Namespace, pd: list[str], token: str | None) -> int:
    cmd = args.kv_command
    key = b""
    if cmd in ("put", "get", "delete"):
        key = _arg_bytes(args, "KEY", args.key)
        if not key:
            raise UsageError("KEY must not be empty")
    session = connect(
        pd,
        timeout=args.timeout,
        token=token,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    async with session as kv:
        if cmd == "put":
            await kv.put(key, _arg_bytes(args, "VALUE", args.value))
        elif cmd == "get":
            _check_read_flags(args)
            got = await kv.get_with_staleness(
                key, consistency=args.consistency, max_staleness=args.max_staleness
            )
            if got.value is None:
                print(f"{PROG}: get {_show(key, args.hex)}: not found", file=sys.stderr)
                return 1
            print(_show(got.value, args.hex))
            _note_staleness(args, got.staleness)
        elif cmd == "delete":
            await kv.delete(key)
        elif cmd == "scan":
            if args.limit <= 0:
                raise UsageError(f"--limit must be positive, got {args.limit}")
            start = _arg_bytes(args, "--start", args.start)
            end = _arg_bytes(args, "--end", args.end)
            if end and end < start:
                raise UsageError("--end must not be below --start")
            _check_read_flags(args)
            result = await kv.scan_with_staleness(
                start,
                end,
                limit=args.limit,
                reverse=args.reverse,
                keys_only=args.keys_only,
                consistency=args.consistency,
                max_staleness=args.max_staleness,
            )
            for k, v in result.value:
                if args.keys_only:
                    print(_show(k, args.hex))
                else:
                    print(f"{_show(k, args.hex)}\t{_show(v, args.hex)}")
            _note_staleness(args, result.staleness)
        else:
            raise AssertionError(f"unknown kv command {cmd!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
