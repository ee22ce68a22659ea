"""Error feedback: a node carries the rounding error of each upload into its next one.

A coarse value codec (int4) rounds every alive value by up to half a step of its layer's
scale. Sent as is, that error is lost every round; with error feedback the node keeps the
residual (what it meant to send minus what the coordinator will decode) and adds it to
its next upload, so over rounds the coordinator receives what the node trained, only
later (Seide et al., 2014; Karimireddy et al., 2019). The residual belongs to one mask:
when the mask in force changes (a new consensus) it is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpfl.wire import ValueCodec, decode_values, encode_values


class ErrorFeedback:
    def __init__(self) -> None:
        self._mask_round = -1
        self._residual: np.ndarray | None = None

    def encode(
        self, values: np.ndarray, sizes: Sequence[int], codec: str, base: np.ndarray | None,
        mask_round: int,
    ) -> tuple[ValueCodec, bytes]:
        """Encode ``values`` plus the residual kept under the same mask; keep the new one."""
        target = values.astype(np.float32)
        residual = self._residual
        if residual is not None and self._mask_round == mask_round and (
                residual.shape == target.shape):
            target = target + residual
        codec_id, payload = encode_values(target, sizes, codec, base)
        self._residual = target - decode_values(codec_id, payload, sizes, base)
        self._mask_round = mask_round
        return codec_id, payload
