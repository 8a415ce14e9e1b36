"""Config: defaults, text forms, pd.toml and flags, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from placement_driver.config import (
    CLUSTER_KEYS,
    MAX_DURATION,
    ClusterConfig,
    ConfigError,
    cluster_config_from,
    load_startup_config,
)
from plumbing.units import format_duration, format_size, parse_duration, parse_size


def test_defaults_match_the_issue() -> None:
    c = ClusterConfig()
    assert c.max_replicas == 3
    assert c.region_max_size == 96 * 1024 * 1024
    assert c.region_max_keys == 960_000
    assert c.max_store_down_time == 30 * 60
    assert c.store_disconnect_time == 20
    assert c.items()["region_max_size"] == "96MiB"
    assert c.items()["max_store_down_time"] == "30m"
    assert c.toml_values()["max_replicas"] == 3


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1800.0, "30m"), (20.0, "20s"), (0.25, "250ms"), (1.5, "1.5s"), (7200.0, "2h"), (90.0, "90s")],
)
def test_durations_are_written_in_their_shortest_exact_form(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@given(st.floats(min_value=0.001, max_value=MAX_DURATION, allow_nan=False))
def test_every_duration_reads_back_exactly(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=1 << 50))
def test_every_size_reads_back_exactly(n: int) -> None:
    assert parse_size(format_size(n)) == n


def test_values_may_be_text_or_numbers() -> None:
    c = cluster_config_from(
        {"max_replicas": "5", "region_max_size": 1024, "max_store_down_time": "1h"}
    )
    assert (c.max_replicas, c.region_max_size, c.max_store_down_time) == (5, 1024, 3600.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"max_replica": 3},
            "unknown cluster config key 'max_replica' (did you mean 'max_replicas'?)",
        ),
        ({"max_replicas": "three"}, "bad value for max_replicas"),
        ({"max_replicas": 0}, "below the minimum"),
        ({"region_max_size": "lots"}, "bad value for region_max_size"),
        ({"max_store_down_time": "soon"}, "bad value for max_store_down_time"),
        ({"store_disconnect_time": "1h"}, "store_disconnect_time must be shorter"),
    ],
)
def test_bad_keys_and_values_are_refused_naming_the_key(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(
        ConfigError,
        match="^.*" + message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?"),
    ):
        cluster_config_from(values)


def test_applying_items_keeps_the_other_keys() -> None:
    base = cluster_config_from({"max_replicas": 5})
    c = cluster_config_from({"region_max_keys": "10"}, base)
    assert (c.max_replicas, c.region_max_keys) == (5, 10)


def test_startup_config_reads_pd_toml_and_flags_override_it(tmp_path: Path) -> None:
    toml = tmp_path / "pd.toml"
    toml.write_text(
        'data_dir = "/data/pd"\nlisten = "127.0.0.1:0"\nmax_replicas = 5\n'
        'max_store_down_time = "1h"\nregion_max_size = "64MiB"\n'
    )
    startup = load_startup_config(
        str(toml), {"listen": "127.0.0.1:3379", "max_replicas": "1", "http": None}
    )
    assert startup.server.data_dir == "/data/pd"
    assert startup.server.listen == "127.0.0.1:3379"
    assert startup.server.http == "127.0.0.1:2380"
    assert dict(startup.cluster_overrides) == {
        "max_replicas": "1",
        "max_store_down_time": "1h",
        "region_max_size": "64MiB",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('data_dir = "d"\nmax_replicass = 3\n', "unknown config key 'max_replicass' in"),
        ('data_dir = "d"\nmax_replicas = true\n', "bad value for max_replicas"),
        ('data_dir = "d"\nlisten = "nowhere"\n', "bad value for listen"),
        ("max_replicas = 3\n", "data_dir is required"),
        ('data_dir = "d"\nmax_replicas = [\n', "not valid TOML"),
    ],
)
def test_a_bad_pd_toml_is_refused_with_a_clear_message(
    tmp_path: Path, text: str, message: str
) -> None:
    toml = tmp_path / "pd.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_startup_config(str(toml), {})
    assert message in str(info.value)


def test_a_missing_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_startup_config(str(tmp_path / "nope.toml"), {"data_dir": "d"})


def test_every_cluster_key_has_help_and_a_text_form() -> None:
    items = ClusterConfig().items()
    assert tuple(items) == CLUSTER_KEYS
    assert cluster_config_from(items) == ClusterConfig()
