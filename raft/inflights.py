"""Flow control for one follower: the appends sent but not yet acknowledged."""

from __future__ import annotations

from collections import deque


class Inflights:
    """A bounded window of in-flight append messages, by count and by bytes.

    Each entry is the last log index carried by one message; acknowledging
    index `i` frees every message whose last index is <= i.
    Invariant: indexes in the window are strictly increasing.
    """

    __slots__ = ("_bytes", "_max_bytes", "_msgs", "_size")

    def __init__(self, size: int, max_bytes: int = 0) -> None:
        if size <= 0:
            raise ValueError("inflight window size must be positive")
        self._size = size
        self._max_bytes = max_bytes  # 0 means no byte limit
        self._msgs: deque[tuple[int, int]] = deque()
        self._bytes = 0

    def copy(self) -> Inflights:
        c = Inflights(self._size, self._max_bytes)
        c._msgs.extend(self._msgs)
        c._bytes = self._bytes
        return c

    def add(self, index: int, nbytes: int) -> None:
        if self.full():
            raise AssertionError("cannot add into a full inflights window")
        if self._msgs and index <= self._msgs[-1][0]:
            raise AssertionError(f"inflight index {index} not above {self._msgs[-1][0]}")
        self._msgs.append((index, nbytes))
        self._bytes += nbytes

    def free_le(self, to: int) -> None:
        msgs = self._msgs
        while msgs and msgs[0][0] <= to:
            self._bytes -= msgs.popleft()[1]

    def full(self) -> bool:
        return len(self._msgs) >= self._size or (
            self._max_bytes > 0 and self._bytes >= self._max_bytes
        )

    def count(self) -> int:
        return len(self._msgs)

    @property
    def bytes(self) -> int:
        return self._bytes

    def reset(self) -> None:
        self._msgs.clear()
        self._bytes = 0
