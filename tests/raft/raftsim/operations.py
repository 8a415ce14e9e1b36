"""What a client (or an operator) asks of the nodes of a simulated Raft group:
proposals of fresh puts, conf changes, ReadIndex reads, leader transfers.
The checker learns of every proposal accepted or refused and of every read.
"""

from __future__ import annotations

from raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeSingle,
    ConfChangeTransition,
    ProposalDroppedError,
)

from .app import conf_context, encode_proposal
from .driver import Driver
from .world import World


class Operations:
    def __init__(self, world: World, driver: Driver) -> None:
        self.driver = driver
        self.rng = world.rng
        self.nodes = world.nodes
        self.checker = world.checker
        self.note = world.note
        self.guard = world.guard
        self._next_pid = 1
        self._next_read = 1

    @property
    def last_pid(self) -> int:
        """The id of the last proposal (or conf change) made."""
        return self._next_pid - 1

    def propose(self, nid: int, kind: str = "put") -> int | None:
        """Propose a fresh put at `nid`; returns its index, None if refused."""
        n = self.nodes[nid]
        rn = n.rn
        if rn is None:
            return None
        pid = self._next_pid
        self._next_pid += 1
        data = encode_proposal(pid, self.rng.randrange(16), pid)
        with self.guard():
            try:
                index = rn.propose(data)
            except ProposalDroppedError as e:
                self.checker.proposal_refused(e)
                self.note(nid, "propose refused", f"p{pid}: {e}")
                return None
            self.checker.proposal_accepted(pid, kind, nid, rn.term, index)
            self.note(nid, "propose", f"p{pid} at {rn.term}/{index}")
            self.driver.after_input(n)
        return index

    def propose_conf_change(
        self,
        nid: int,
        changes: tuple[ConfChangeSingle, ...],
        transition: ConfChangeTransition = ConfChangeTransition.AUTO,
    ) -> int | None:
        n = self.nodes[nid]
        rn = n.rn
        if rn is None:
            return None
        pid = self._next_pid
        self._next_pid += 1
        cc = ConfChange(changes, transition, conf_context(pid))
        with self.guard():
            try:
                index = rn.propose_conf_change(cc)
            except (ProposalDroppedError, ConfChangeError) as e:
                self.checker.proposal_refused(e)
                self.note(nid, "conf change refused", f"c{pid} {cc}: {e}")
                return None
            self.checker.proposal_accepted(pid, "conf", nid, rn.term, index)
            self.note(nid, "propose conf change", f"c{pid} at {rn.term}/{index}: {cc}")
            self.driver.after_input(n)
        return index

    def read_index(self, nid: int) -> None:
        n = self.nodes[nid]
        if n.rn is None:
            return
        ctx = b"r%d" % self._next_read
        self._next_read += 1
        with self.guard():
            self.checker.on_read_request(ctx)
            try:
                n.rn.read_index(ctx)
            except ProposalDroppedError as e:
                self.checker.on_read_refused(ctx)
                self.note(nid, "read_index refused", f"{ctx.decode()}: {e}")
                return
            self.note(nid, "read_index", ctx.decode())
            self.driver.after_input(n)

    def transfer_leader(self, nid: int, to: int) -> None:
        n = self.nodes[nid]
        if n.rn is None:
            return
        with self.guard():
            n.rn.transfer_leader(to)
            self.note(nid, "transfer_leader", f"to {to}")
            self.driver.after_input(n)
