"""The link planner: how long a run takes on a real link, MPFL against dense FedAvg.

From what a run measured (``rounds``: exact bytes per node and round, accuracy, training
time) it computes wall-clock on planned links (``timing``) and prints the comparison
(``text``); ``run_dir`` does all three for a finished run directory. Pure functions of
the numbers passed in: no network, no torch.
"""

from apps.plan.rounds import (
    MESSAGES_PER_ROUND,
    STATE_MESSAGE_BYTES,
    RoundBytes,
    dense_fedavg_rounds,
    dense_model_bytes,
    dense_update_bytes,
    node_train_seconds,
    param_count,
    rounds_from_logs,
    rounds_from_metrics,
)
from apps.plan.run_dir import plan_from_run_dir
from apps.plan.text import format_plan, headline
from apps.plan.timing import (
    Comparison,
    RoundTiming,
    Timeline,
    compare,
    final_accuracy,
    first_reaching,
    round_comm_seconds,
    setup_seconds,
    timeline,
)
from apps.plan.units import format_bytes, format_duration

__all__ = [
    "MESSAGES_PER_ROUND",
    "STATE_MESSAGE_BYTES",
    "Comparison",
    "RoundBytes",
    "RoundTiming",
    "Timeline",
    "compare",
    "dense_fedavg_rounds",
    "dense_model_bytes",
    "dense_update_bytes",
    "final_accuracy",
    "first_reaching",
    "format_bytes",
    "format_duration",
    "format_plan",
    "headline",
    "node_train_seconds",
    "param_count",
    "plan_from_run_dir",
    "round_comm_seconds",
    "rounds_from_logs",
    "rounds_from_metrics",
    "setup_seconds",
    "timeline",
]
