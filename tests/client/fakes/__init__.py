"""A fake cluster for client tests: a fake PD and fake stores, each a real
`kvproto.rpc.RpcServer`, with scripted answers.

* `cluster`: `FakeCluster` holds the truth (regions, leaders, data) and
  records what the stores and the PD were asked.
* `store`: `FakeStore` answers like the real store does and executes the
  request on the cluster's data; its `script` of `Rule`s (`on(...)` with a
  region error, a KvError, `Hold` or `Cut`) answers ahead of that.
* `pd`: `FakePd` answers from the truth, or from a frozen copy of it
  (`FakeCluster.freeze_pd`: a PD that lags behind the stores).
* `net`: `MemoryNet` connects through in-memory streams (tests run under
  the autojump clock: nothing waits for real time).
* `harness`: `fake_cluster` puts them on a memory network with a client
  (the `h` fixture of conftest.py); `tcp_cluster` puts the same servers on
  loopback ports (for the blocking client and the CLI).
"""

from tests.client.fakes.cluster import FakeCluster, Seen, store_address
from tests.client.fakes.harness import Harness, TcpCluster, fake_cluster, tcp_cluster
from tests.client.fakes.net import PD_ADDRESS, MemoryNet, memory_pd_client
from tests.client.fakes.pd import FakePd
from tests.client.fakes.store import MAX_KEY_SIZE, Action, Cut, FakeStore, Hold, Rule, on

__all__ = [
    "MAX_KEY_SIZE",
    "PD_ADDRESS",
    "Action",
    "Cut",
    "FakeCluster",
    "FakePd",
    "FakeStore",
    "Harness",
    "Hold",
    "MemoryNet",
    "Rule",
    "Seen",
    "TcpCluster",
    "fake_cluster",
    "memory_pd_client",
    "on",
    "store_address",
    "tcp_cluster",
]
