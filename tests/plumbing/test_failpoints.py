"""Failpoints: the spec's forms, refusals naming what is wrong (never a
half-applied spec), and what a set failpoint does at its call site."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from plumbing import failpoints
from plumbing.failpoints import Action, FailpointError, FailpointPanic, Kind
from plumbing.units import parse_size

IO = failpoints.declare("test.io", "a system call of the test fails")
FREE = failpoints.declare(
    "test.free", "the free bytes the test sees", kinds={Kind.RETURN}, check=parse_size
)


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    failpoints.reset()
    yield
    failpoints.reset()


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("off", Action(Kind.OFF)),
        ("panic", Action(Kind.PANIC)),
        ("error", Action(Kind.ERROR, errno.EIO)),
        ("error(ENOSPC)", Action(Kind.ERROR, errno.ENOSPC)),
        ("error(28)", Action(Kind.ERROR, 28)),
        ("eio", Action(Kind.ERROR, errno.EIO)),
        (" ENOSPC ", Action(Kind.ERROR, errno.ENOSPC)),
        ("return(10MiB)", Action(Kind.RETURN, value="10MiB")),
        ("0", Action(Kind.RETURN, value="0")),
    ],
)
def test_actions_read_from_text(text: str, action: Action) -> None:
    assert failpoints.parse_action(text) == action


def test_an_action_writes_itself_as_text_that_reads_back() -> None:
    for text in ("off", "panic", "error(EIO)", "error(ENOSPC)", "return(0)"):
        action = failpoints.parse_action(text)
        assert str(action) == text
        assert failpoints.parse_action(str(action)) == action


def test_a_spec_sets_several_failpoints_and_fires_them() -> None:
    assert not failpoints.registry.active
    failpoints.configure(f"{IO}=enospc; {FREE}=0")
    assert failpoints.registry.active
    with pytest.raises(OSError, match=r"failpoint test\.io") as info:
        failpoints.fire(IO)
    assert info.value.errno == errno.ENOSPC
    assert failpoints.value(FREE) == "0"
    failpoints.fire(FREE)  # a value, not an error
    assert failpoints.value(IO) is None
    assert {n: str(a) for n, a in failpoints.current().items()} == {
        IO: "error(ENOSPC)",
        FREE: "return(0)",
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("test.oi=eio", r"unknown failpoint 'test\.oi' \(known: .*test\.io"),
        ("test.io", "expected name=action"),
        ("test.io=", "an action is needed"),
        ("test.io=error(EWHAT)", "'EWHAT' is not an errno"),
        ("test.io=error(0)", "'0' is not an errno"),
        ("test.io=10MiB", r"test\.io takes error, off, panic, not return\(10MiB\)"),
        ("test.free=eio", r"test\.free takes off, return, not error\(EIO\)"),
        ("test.free=lots", "bad value 'lots'"),
        ("test.io=" + "x" * 5000, "too long"),
    ],
)
def test_a_bad_spec_is_refused_whole_with_its_reason(spec: str, message: str) -> None:
    failpoints.configure(f"{FREE}=5")
    with pytest.raises(FailpointError, match=message):
        failpoints.configure(f"{IO}=eio;{spec}")
    # Nothing of the bad spec applied; what was set stays.
    assert failpoints.current() == {FREE: Action(Kind.RETURN, value="5")}


def test_the_environment_variable_sets_failpoints_at_start() -> None:
    env = {failpoints.ENV_VAR: f"{IO}=eio"}
    assert failpoints.configure_from_env(env) == {IO: Action(Kind.ERROR, errno.EIO)}
    with pytest.raises(OSError, match="Input/output error"):
        failpoints.fire(IO)
    assert failpoints.configure_from_env({}) == {}
    with pytest.raises(FailpointError, match=f"^{failpoints.ENV_VAR}: unknown failpoint"):
        failpoints.configure_from_env({failpoints.ENV_VAR: "nope=eio"})


def test_enable_disable_and_off_at_run_time() -> None:
    failpoints.fire(IO)  # not set: nothing
    failpoints.enable(IO, "panic")
    with pytest.raises(FailpointPanic):
        failpoints.fire(IO)
    assert failpoints.disable(IO) is True
    assert failpoints.disable(IO) is False
    assert not failpoints.registry.active
    failpoints.enable(FREE, "return(1KiB)")
    failpoints.enable(FREE, "off")
    assert failpoints.current() == {} and not failpoints.registry.active
    with pytest.raises(FailpointError, match="unknown failpoint"):
        failpoints.disable("nope")
