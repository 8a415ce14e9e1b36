"""`shardkv ctl`'s human output (`client.ctl_format`): pure functions of
the admin API's documents; and the rule that the ctl talks HTTP JSON only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from client.ctl_format import (
    format_config,
    format_operator,
    format_removed,
    format_schedulers,
    format_store,
    format_stores,
    show_key,
    size,
    table,
)

ROOT = Path(__file__).resolve().parents[2]


def key(raw: bytes) -> dict[str, Any]:
    try:
        text: str | None = raw.decode()
    except UnicodeDecodeError:
        text = None
    return {"hex": raw.hex(), "text": text}


def test_tables_align_columns_and_say_when_empty() -> None:
    assert table(("ID", "NAME"), [["1", "balance-leader"], ["22", "x"]]) == (
        "ID  NAME\n1   balance-leader\n22  x"
    )
    assert table(("ID", "NAME"), []) == "ID  NAME\n(none)"


def test_keys_show_as_text_when_printable_else_as_hex() -> None:
    assert show_key(key(b"user42")) == "user42"
    assert show_key(key("ключ".encode())) == "ключ"
    assert show_key(key(b"\xff\x00")) == "hex:ff00"
    assert show_key(key(b"a\tb")) == "hex:610962"  # a tab would break the columns
    assert show_key(key(b"hex:41")) == "hex:6865783a3431"  # never mistaken for hex
    assert show_key(key(b""), empty="(max)") == "(max)"
    assert show_key(None) == "-"


def test_sizes_are_rounded_for_reading() -> None:
    assert [size(n) for n in (None, 0, 1023, 1536, 96 << 20, 3 << 40, 5000 << 40)] == [
        "-",
        "0 B",
        "1023 B",
        "1.5 KiB",
        "96.0 MiB",
        "3.0 TiB",
        "5000.0 TiB",
    ]


def test_a_store_without_a_heartbeat_yet_shows_dashes() -> None:
    doc = {
        "stores": [
            {
                "id": 7,
                "address": "10.0.0.7:20160",
                "state": "Up",
                "labels": {"zone": "b", "rack": "r1"},
                "seconds_since_heartbeat": None,
                "stats": None,
            }
        ]
    }
    assert format_stores(doc).splitlines()[1].split() == [
        "7",
        "10.0.0.7:20160",
        "Up",
        "-",
        "-",
        "-",
        "-",
        "never",
        "rack=r1,zone=b",
    ]


def test_a_replaced_store_and_its_replacement_say_so() -> None:
    base = {"address": "10.0.0.13:20160", "labels": {}, "stats": None}
    old = {**base, "id": 3, "state": "Tombstone", "replaces": None, "replaced_by": 9}
    new = {**base, "id": 9, "state": "Up", "replaces": 3, "replaced_by": None}
    assert format_store(old).splitlines()[-1] == "replaced by:     store 9"
    assert format_store(new).splitlines()[-1] == "replaces:        store 3"
    plain = {**base, "id": 1, "state": "Up"}
    assert "replace" not in format_store(plain)


def test_an_operator_shows_where_it_stopped_and_why() -> None:
    doc = {
        "region_id": 5,
        "desc": "transfer-peer",
        "kind": "admin",
        "status": "timeout",
        "steps": [
            {"description": "add learner peer 9 on store 4"},
            {"description": "joint: promote peer 9 on store 4, demote peer 7 on store 2"},
            {"description": "remove peer 7 on store 2"},
        ],
        "current_step": 1,
        "seconds_running": 60.25,
        "seconds_since_finished": 3.0,
        "reason": "step 2 not done in 60 s",
    }
    assert format_operator(doc).splitlines() == [
        "region:      5",
        "operator:    transfer-peer (admin)",
        "status:      timeout: step 2 not done in 60 s",
        "running for: 60.2s",
        "finished:    3.0s ago",
        "steps:",
        "  done  1. add learner peer 9 on store 4",
        "  stop  2. joint: promote peer 9 on store 4, demote peer 7 on store 2",
        "        3. remove peer 7 on store 2",
    ]


def test_the_config_prints_as_pd_toml_lines() -> None:
    doc = {"max_replicas": 3, "max_store_down_time": "30m", "odd": 'say "hi"'}
    assert format_config(doc) == (
        'max_replicas = 3\nmax_store_down_time = "30m"\nodd = "say \\"hi\\""'
    )


def test_schedulers_and_removed_stores() -> None:
    doc = {
        "schedulers": [
            {"name": "evict-leader-4", "store_id": 4, "paused_until": None, "operators_created": 2},
            {
                "name": "balance-region",
                "store_id": None,
                "paused_until": 12.3456,
                "operators_created": 0,
            },
        ]
    }
    assert format_schedulers(doc).splitlines() == [
        "NAME            STORE  RESUMES IN  OPERATORS",
        "evict-leader-4  4      -           2",
        "balance-region  -      12.3s       0",
    ]
    assert format_removed({"count": 0, "removed": []}) == "no Tombstone store to remove"
    removed = {"count": 1, "removed": [{"id": 4, "address": "h:1"}]}
    assert format_removed(removed) == "store 4 (h:1) removed"


def test_the_ctl_imports_neither_the_pd_nor_the_store() -> None:
    # It talks HTTP JSON only: it runs from a client-only install.
    code = (
        "import sys, client.ctl; "
        "print(sorted({n.split('.')[0] for n in sys.modules} "
        "& {'placement_driver', 'store_node', 'lmdb', 'hypercorn'}))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert r.stdout.strip() == "[]"
