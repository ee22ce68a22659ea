"""A coordinator's state to a checkpoint and back: what ``FederationServer.snapshot`` saves
and what ``FederationServer.restore`` puts back in a fresh server (the format itself is
``snapshot``'s)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mpfl.choices import Phase
from mpfl.federation.rounds import NodeTable
from mpfl.federation.snapshot import FINISHED, Saved
from mpfl.federation.traffic import Traffic

if TYPE_CHECKING:
    from mpfl.federation.server import FederationServer


def saved_state(server: FederationServer) -> Saved:
    """Everything a restarted coordinator needs, after the last closed round."""
    return Saved(
        server.run_id, server.phase if server.finished else "running", server.round,
        server.error, server.mask, server.weights.history, server.global_values,
        server.weights.optimizer.state(), server.nodes,
        server.dropped, server.traffic.uplink, server.traffic.downlink, server.log,
    )


def resume(server: FederationServer, saved: Saved) -> None:
    """Put ``saved`` into a freshly built ``server`` and open the round after the last
    closed one (``start()`` then publishes everything a node needs)."""
    weights = server.weights
    weights.mask, weights.history = saved.mask, saved.history
    weights.values = saved.global_values
    weights.optimizer.restore(saved.server_state)
    server.run_id, server.nodes = saved.run_id, NodeTable(saved.nodes)
    server.dropped, server.log = saved.dropped, saved.log
    server.traffic = Traffic(saved.uplink, saved.downlink)
    closed = saved.closed_round
    if saved.status in FINISHED:
        server.phase, server.round, server.error = Phase(saved.status), saved.round, saved.error
    elif closed >= server.total_rounds:
        server.phase, server.round = Phase.DONE, closed
    elif closed > 0:
        server.open_round(closed + 1)
