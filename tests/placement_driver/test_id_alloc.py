"""IdAllocator: blocks persisted ahead of use, no id twice across restarts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from placement_driver.id_alloc import IdAllocator


class Bounds:
    def __init__(self) -> None:
        self.saved: list[int] = []
        self.fail = False

    def save_id_bound(self, bound: int) -> None:
        if self.fail:
            raise OSError("disk gone")
        self.saved.append(bound)

    @property
    def durable(self) -> int:
        return self.saved[-1] if self.saved else 0


def test_ids_start_at_one_and_a_block_is_persisted_before_its_first_id() -> None:
    bounds = Bounds()
    ids = IdAllocator(bounds, 0, step=5)
    assert list(ids.alloc()) == [1]
    assert bounds.saved == [6]  # [1, 6) reserved before 1 was handed out
    assert [i for _ in range(4) for i in ids.alloc()] == [2, 3, 4, 5]
    assert bounds.saved == [6]  # no write inside a block
    assert list(ids.alloc()) == [6]
    assert bounds.saved == [6, 11]


def test_a_restart_resumes_at_the_persisted_bound() -> None:
    bounds = Bounds()
    ids = IdAllocator(bounds, 0, step=5)
    ids.alloc(2)  # 1, 2 handed out; 3..5 never will be
    restarted = IdAllocator(bounds, bounds.durable, step=5)
    assert list(restarted.alloc()) == [6]


def test_a_failed_write_hands_out_nothing() -> None:
    bounds = Bounds()
    ids = IdAllocator(bounds, 0, step=2)
    ids.alloc(2)
    bounds.fail = True
    with pytest.raises(OSError, match="disk gone"):
        ids.alloc()
    bounds.fail = False
    assert list(ids.alloc()) == [3]


def test_skip_past_reserves_ids_chosen_elsewhere() -> None:
    bounds = Bounds()
    ids = IdAllocator(bounds, 0, step=5)
    ids.skip_past(42)
    assert bounds.durable > 42
    assert list(ids.alloc()) == [43]
    ids.skip_past(7)  # already below: nothing changes
    assert list(ids.alloc()) == [44]


@given(
    st.lists(
        st.one_of(st.integers(1, 7), st.just("restart")),
        max_size=40,
    ),
    st.integers(1, 6),
)
def test_no_id_is_handed_out_twice_across_restarts(ops: list[int | str], step: int) -> None:
    bounds = Bounds()
    ids = IdAllocator(bounds, 0, step)
    seen: list[int] = []
    for op in ops:
        if op == "restart":
            ids = IdAllocator(bounds, bounds.durable, step)
            continue
        assert isinstance(op, int)
        got = list(ids.alloc(op))
        assert len(got) == op
        assert all(i < bounds.durable for i in got)  # durable before use
        seen.extend(got)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert 0 not in seen
