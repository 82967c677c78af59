"""`make cluster-down` leaves nothing behind: no process, and every host change undone.

The real node changes the host (sysctls, iptables chains, a bridge, routes, mounts, cgroups, fixed
paths). This stops the suite's own cluster through the same ``down()`` that `make cluster-down`
calls and checks each of those against what the host had before the node first started. Marked
``teardown``, so conftest runs it after every other test of the session.
"""

from __future__ import annotations

import pytest

from cluster import local
from cluster import node as real_node

pytestmark = [pytest.mark.e2e, pytest.mark.teardown]


def test_cluster_down_stops_every_process_and_undoes_every_host_change(
    local_cluster: local.LocalCluster,
) -> None:
    node = local_cluster.node
    assert node.running(), "the real node was not running during the suite"
    before = real_node.host_record(node.host_record)
    assert before, "the host's state before the real node was never recorded"
    assert node.leftovers(), "a running node that leftovers() cannot see would make this test blind"

    local_cluster.down()

    assert local_cluster.pids() == []
    assert node.leftovers() == []
    assert real_node.host_changes(before) == []
    assert not node.host_record.exists()
