"""What the coordinator tells every node about where the federation is: the state
document of ``server/state``, built from the round state machine's fields."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mpfl.choices import Granularity, LayerSparsity, Mode, ModelScope, ValueCodecName
from mpfl.wire.protocol import PROTOCOL_VERSION, StateDocument

if TYPE_CHECKING:
    from mpfl.federation.server import FederationServer


def state_document(server: FederationServer) -> StateDocument:
    cfg = server.cfg
    return StateDocument(
        protocol=PROTOCOL_VERSION,
        federation=cfg.federation,
        session=server.session,
        run=server.run_id,
        phase=server.phase,
        round=server.round,
        mask_rounds=cfg.mask_rounds,
        train_rounds=cfg.train_rounds,
        target_sparsity=server.target(),
        layer_sparsity=LayerSparsity(cfg.layer_sparsity),
        deadline=server.deadline,
        model=cfg.model_spec,
        granularity=Granularity(cfg.granularity),
        fingerprint=server.unit_map.fingerprint.hex(),
        model_scope=ModelScope.DENSE if server.global_values is None else ModelScope.MASK,
        train=cfg.train_spec,
        value_codec=ValueCodecName(cfg.value_codec),
        mode=Mode(cfg.mode),
        delta=cfg.delta, error_feedback=cfg.error_feedback,
        error=server.error,
    )
