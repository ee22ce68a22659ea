"""One runner for MPFL and its baselines on identical data, partitions and seeds.

``run_experiment(name, dataset, model, method, sparsity)`` runs one method and returns
its final test accuracy and the exact uplink/downlink bytes of every round. Methods:

- ``mpfl``: mask rounds then masked training rounds, through the coordinator and node
  logic of the MQTT path over the in-memory transport (bytes are the real messages).
- ``mpfl-joint``: the same in joint mode: mask rounds also average the masked weights.
- ``fedavg``: the same federation with no mask phase (dense; ``sparsity`` is ignored).
- ``fedavg-prune``: that dense run's final model pruned once to ``sparsity``.
- ``central``: the federation's schedule on the pooled data; no bytes travel.

:class:`Experiments` keeps loaded datasets and dense runs, so a sweep over sparsities
trains dense FedAvg once and every method sees the same split.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apps.baselines import (
    CentralRound,
    centralised_pruning,
    dense_fedavg_config,
    evaluate_state,
    fedavg_then_prune,
)
from mpfl.config.settings import FederationConfig
from mpfl.errors import ConfigError
from mpfl.federation.evaluation import dataset_evaluator
from mpfl.federation.metrics import RoundLog
from mpfl.federation.server import FederationServer
from mpfl.federation.simulation import run_in_process
from mpfl.maths.partition import partition
from mpfl.ml.data import Dataset, load_cifar10, load_dataset
from mpfl.ml.robustness import corrupt_nodes
from mpfl.ml.units import State

METHODS = ("mpfl", "mpfl-joint", "fedavg", "fedavg-prune", "central")
# The CIFAR-10 split: two training batches (20k images) and the test batch.
CIFAR_TRAIN_BATCHES = ("data_batch_1", "data_batch_2")


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything every method of one comparison shares."""

    nodes: int = 10
    partition: str = "dirichlet:0.5"
    seed: int = 0
    mask_rounds: int = 5
    train_rounds: int = 15
    schedule: str = "linear"
    layer_sparsity: str = "uniform"
    consensus: str = "top-votes"
    granularity: str = "filter"
    value_codec: str = "fp32"
    delta: bool = False
    error_feedback: bool = False
    server_optimizer: str = "none"
    server_momentum: float = 0.5
    mode: str = "rewind"  # of the "mpfl" method ("mpfl-joint" is always joint)
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    # The centralised baseline's own learning rate (None: the nodes' ``lr``). One trainer
    # on the pooled data takes ``nodes`` times more steps per round than any node.
    central_lr: float | None = None
    train_limit: int | None = None  # a seeded random subset of the training split
    test_limit: int | None = None
    noise_nodes: tuple[int, ...] = ()
    permuted_nodes: tuple[int, ...] = ()
    eval_every_round: bool = True  # per-round accuracy; off saves time in sweeps

    @property
    def rounds(self) -> int:
        return self.mask_rounds + self.train_rounds


@dataclass(frozen=True)
class RoundRecord:
    round: int
    phase: str
    target_sparsity: float
    sparsity: float
    accuracy: float | None
    loss: float | None
    uplink_bytes: int
    downlink_bytes: int
    cumulative_uplink_bytes: int
    dense_uplink_bytes: int
    seconds: float


@dataclass
class ExperimentResult:
    name: str
    method: str
    dataset: str
    model: str
    granularity: str
    target_sparsity: float
    sparsity: float
    accuracy: float
    loss: float
    uplink_bytes: int  # everything the nodes sent, exactly as published
    downlink_bytes: int  # everything the coordinator published, times its recipients
    dense_uplink_bytes: int  # what fp32 dense updates of the same rounds would cost
    rounds: list[RoundRecord]
    seconds: float
    settings: ExperimentSettings
    train_samples: int = 0  # after any --train-limit subsetting
    test_samples: int = 0
    final_state: State | None = field(default=None, repr=False)
    final_mask: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the final state and mask, as JSON-ready values."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("final_state", "final_mask", "rounds", "settings")}
        out["rounds"] = [dataclasses.asdict(r) for r in self.rounds]
        out["settings"] = dataclasses.asdict(self.settings)
        return out

    @staticmethod
    def from_dict(doc: dict[str, Any]) -> ExperimentResult:
        """The inverse of :meth:`to_dict` (without state and mask)."""
        settings = dict(doc["settings"])
        for key in ("noise_nodes", "permuted_nodes"):
            settings[key] = tuple(settings.get(key, ()))
        fields = {k: v for k, v in doc.items() if k not in ("rounds", "settings")}
        return ExperimentResult(**fields, rounds=[RoundRecord(**r) for r in doc["rounds"]],
                                settings=ExperimentSettings(**settings))


@dataclass(frozen=True)
class ExperimentData:
    train: Dataset
    test: Dataset
    parts: list[np.ndarray]
    node_data: list[Dataset]

    @property
    def model_args(self) -> dict[str, int]:
        """The shape arguments every zoo model takes, read off the data."""
        c, h, _ = self.train.shape
        return {"in_channels": c, "image_size": h, "num_classes": self.train.num_classes}


def load_split(dataset: str, data_dir: str | Path | None, split: str) -> Dataset:
    """A dataset split; CIFAR-10 trains on data_batch_1 and data_batch_2 only."""
    if dataset == "cifar10" and split == "train" and data_dir is not None:
        root = Path(data_dir)
        cifar = root / "cifar-10" if (root / "cifar-10").is_dir() else root / "cifar10"
        return load_cifar10(cifar if cifar.is_dir() else root, split, list(CIFAR_TRAIN_BATCHES))
    return load_dataset(dataset, data_dir, split)


def _limit(data: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= len(data):
        return data
    if limit < 1:
        raise ConfigError("a sample limit must be at least 1", limit=limit)
    index = np.sort(np.random.default_rng(seed).permutation(len(data))[:limit])
    return data.subset(index)


def prepare_data(
    dataset: str, data_dir: str | Path | None, settings: ExperimentSettings
) -> ExperimentData:
    """Load, subsample, partition and corrupt (robustness switches) one dataset."""
    train = _limit(load_split(dataset, data_dir, "train"), settings.train_limit, settings.seed)
    test = _limit(load_split(dataset, data_dir, "test"), settings.test_limit, settings.seed + 1)
    parts = partition(train.y, settings.nodes, settings.partition, settings.seed)
    nodes = corrupt_nodes([train.subset(p) for p in parts], settings.noise_nodes,
                          settings.permuted_nodes, settings.seed)
    return ExperimentData(train, test, parts, nodes)


def federation_config(
    name: str, model: str, model_args: dict[str, Any], sparsity: float,
    settings: ExperimentSettings,
) -> FederationConfig:
    s = settings
    return FederationConfig(
        federation=name, model=model, model_args=model_args, granularity=s.granularity,
        final_sparsity=sparsity, schedule=s.schedule, layer_sparsity=s.layer_sparsity,
        consensus=s.consensus,
        mask_rounds=s.mask_rounds, train_rounds=s.train_rounds, local_epochs=s.local_epochs,
        batch_size=s.batch_size, lr=s.lr, momentum=s.momentum, value_codec=s.value_codec,
        delta=s.delta, error_feedback=s.error_feedback, server_optimizer=s.server_optimizer,
        server_momentum=s.server_momentum, min_nodes=s.nodes, quorum=s.nodes, seed=s.seed,
    ).validate()


def _records(server: FederationServer) -> list[RoundRecord]:
    out: list[RoundRecord] = []
    cumulative = 0
    for log in server.log:
        cumulative += log.uplink_bytes
        out.append(RoundRecord(log.round, log.phase, log.target_sparsity, log.sparsity,
                               log.accuracy, log.loss, log.uplink_bytes, log.downlink_bytes,
                               cumulative, log.dense_uplink_bytes, log.seconds))
    return out


def _central_records(rounds: Sequence[CentralRound]) -> list[RoundRecord]:
    return [RoundRecord(r.round, r.phase, r.target_sparsity, r.sparsity, r.accuracy, r.loss,
                        0, 0, 0, 0, r.seconds) for r in rounds]


Progress = Callable[[str], None]


class Experiments:
    """Runs methods on shared data; keeps datasets and dense FedAvg runs between calls."""

    def __init__(
        self, data_dir: str | Path | None, settings: ExperimentSettings | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.settings = settings or ExperimentSettings()
        self.progress = progress
        self._data: dict[tuple[str, ExperimentSettings], ExperimentData] = {}
        self._dense: dict[tuple[str, str, ExperimentSettings], ExperimentResult] = {}

    def data(self, dataset: str, settings: ExperimentSettings) -> ExperimentData:
        key = (dataset, settings)
        if key not in self._data:
            self._data[key] = prepare_data(dataset, self.data_dir, settings)
        return self._data[key]

    def run(
        self, name: str, dataset: str, model: str, method: str, sparsity: float = 0.0,
        settings: ExperimentSettings | None = None,
    ) -> ExperimentResult:
        s = settings or self.settings
        if method not in METHODS:
            raise ConfigError(f"unknown method '{method}' (known: {', '.join(METHODS)})")
        start = time.perf_counter()
        data = self.data(dataset, s)
        n_train, n_test = len(data.train), len(data.test)
        if method == "fedavg":
            result = self._fedavg(dataset, model, s)
            return dataclasses.replace(result, name=name, train_samples=n_train,
                                       test_samples=n_test)
        if method == "fedavg-prune":
            result = self._fedavg_prune(dataset, model, sparsity, s)
        elif method == "central":
            result = self._central(dataset, model, sparsity, s)
        else:
            result = self._mpfl(dataset, model, sparsity, s,
                                "joint" if method == "mpfl-joint" else s.mode)
            result.method = method
        result.name = name
        result.seconds = time.perf_counter() - start
        return dataclasses.replace(result, train_samples=n_train, test_samples=n_test)

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    def _on_round(self, label: str) -> Callable[[RoundLog], None]:
        def report(log: RoundLog) -> None:
            acc = f" acc {log.accuracy:.4f}" if log.accuracy is not None else ""
            self._say(f"  {label} round {log.round} {log.phase} sparsity {log.sparsity:.3f}"
                      f"{acc} up {log.uplink_bytes:,} B ({log.seconds:.1f} s)")
        return report

    def _federate(self, cfg: FederationConfig, data: ExperimentData, s: ExperimentSettings,
                  label: str) -> tuple[FederationServer, float, float]:
        evaluate = dataset_evaluator(cfg.model_spec, data.test) if s.eval_every_round else None
        server = run_in_process(cfg, data.node_data, evaluate, self._on_round(label))
        last = server.log[-1]
        if last.accuracy is not None and last.loss is not None:
            return server, last.loss, last.accuracy
        loss, accuracy = evaluate_state(cfg.model_spec, server.final_state(), data.test)
        return server, loss, accuracy

    def _result(self, method: str, dataset: str, cfg: FederationConfig,
                server: FederationServer, loss: float, accuracy: float,
                s: ExperimentSettings, target: float) -> ExperimentResult:
        rounds = _records(server)
        return ExperimentResult(
            "", method, dataset, cfg.model, cfg.granularity, target, server.sparsity(),
            accuracy, loss, server.traffic.uplink, server.traffic.downlink,
            sum(r.dense_uplink_bytes for r in rounds), rounds, 0.0, s,
            final_state=server.final_state(), final_mask=server.mask.copy(),
        )

    def _mpfl(self, dataset: str, model: str, sparsity: float, s: ExperimentSettings,
              mode: str = "rewind") -> ExperimentResult:
        data = self.data(dataset, s)
        cfg = dataclasses.replace(
            federation_config(f"mpfl-{dataset}", model, data.model_args, sparsity, s), mode=mode)
        label = f"mpfl {mode} {dataset} {sparsity:.0%}"
        server, loss, acc = self._federate(cfg, data, s, label)
        return self._result("mpfl", dataset, cfg, server, loss, acc, s, sparsity)

    def _fedavg(self, dataset: str, model: str, s: ExperimentSettings) -> ExperimentResult:
        key = (dataset, model, s)
        if key not in self._dense:
            start = time.perf_counter()
            data = self.data(dataset, s)
            base = federation_config(f"fedavg-{dataset}", model, data.model_args, 0.0, s)
            # The reference: plain FedAvg of fp32 values, whatever MPFL's own options are.
            cfg = dense_fedavg_config(dataclasses.replace(
                base, value_codec="fp32", delta=False, error_feedback=False,
                server_optimizer="none"))
            server, loss, acc = self._federate(cfg, data, s, f"fedavg {dataset}")
            result = self._result("fedavg", dataset, cfg, server, loss, acc, s, 0.0)
            result.seconds = time.perf_counter() - start
            self._dense[key] = result
        return self._dense[key]

    def _fedavg_prune(self, dataset: str, model: str, sparsity: float, s: ExperimentSettings
                      ) -> ExperimentResult:
        dense = self._fedavg(dataset, model, s)
        assert dense.final_state is not None
        data = self.data(dataset, s)
        cfg = federation_config(f"prune-{dataset}", model, data.model_args, sparsity, s)
        point = fedavg_then_prune(cfg.model_spec, s.granularity, dense.final_state, sparsity,
                                  data.test)
        return dataclasses.replace(
            dense, method="fedavg-prune", granularity=s.granularity, target_sparsity=sparsity,
            sparsity=point.sparsity, accuracy=point.accuracy, loss=point.loss,
            final_state=point.state, final_mask=point.mask,
        )

    def _central(self, dataset: str, model: str, sparsity: float, s: ExperimentSettings
                 ) -> ExperimentResult:
        data = self.data(dataset, s)
        cfg = federation_config(f"central-{dataset}", model, data.model_args, sparsity, s)
        if s.central_lr is not None:
            cfg = dataclasses.replace(cfg, lr=s.central_lr).validate()
        pooled = _pool(data.node_data)
        result = centralised_pruning(cfg, pooled, data.test, eval_every_round=s.eval_every_round)
        return ExperimentResult(
            "", "central", dataset, model, s.granularity, sparsity,
            1.0 - float(result.mask.mean()), result.accuracy, result.loss, 0, 0, 0,
            _central_records(result.rounds), 0.0, s, final_state=result.state,
            final_mask=result.mask,
        )


def _pool(node_data: Sequence[Dataset]) -> Dataset:
    """The nodes' data (after any corruption) in one training set."""
    first = node_data[0]
    return Dataset(first.name, np.concatenate([d.x for d in node_data]),
                   np.concatenate([d.y for d in node_data]), first.num_classes)


def run_experiment(
    name: str,
    dataset: str,
    model: str,
    method: str,
    sparsity: float = 0.0,
    settings: ExperimentSettings | None = None,
    data_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> ExperimentResult:
    """Run one method once (see the module docstring); a sweep should share one
    :class:`Experiments` instead, so the dense run and the data are reused."""
    return Experiments(data_dir, settings, progress).run(name, dataset, model, method, sparsity)
