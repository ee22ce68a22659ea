"""The on-device runner: onnxruntime and numpy only, never torch.

``Runner(path).predict(x)`` opens an exported ``.onnx`` or ``.onnx.zst`` file and returns
logits for a float32 NCHW batch. The same module hosts the worker that verification
starts in a fresh (spawned) process, so the check runs exactly the code a device runs.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export.cpu import cpu_info
from mpfl.errors import DataError, ModelError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name)
    for name in ("Fail", "InvalidGraph", "InvalidProtobuf", "InvalidArgument", "NotImplemented",
                 "RuntimeException", "NoSuchFile")
    if hasattr(ort.capi.onnxruntime_pybind11_state, name)
)

# The batch the export report verifies with and mpfl-infer runs by default. int8 models
# quantise activations per batch (dynamic range), so their results depend on it a little.
BATCH_SIZE = 256
INT8_BATCH_NOTE = ("int8 activations are quantised per batch, so accuracy moves slightly "
                   "with the batch size; the export report uses {batch}")


def _is_zstd(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == ZSTD_MAGIC
    except OSError as exc:
        raise DataError(f"cannot read model file: {exc.strerror or exc}", path=str(path)) from exc


def read_model_bytes(path: str | Path) -> bytes:
    """The ONNX bytes of ``path``, decompressing a zstd file (told by its magic number)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read model file: {exc.strerror or exc}", path=str(path)) from exc
    if data[:4] != ZSTD_MAGIC:
        return data
    import zstandard  # only needed for compressed files

    try:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 31)
    except zstandard.ZstdError as exc:
        raise DataError(f"corrupt zstd model file: {exc}", path=str(path)) from exc


class Runner:
    """An onnxruntime session over one exported model, with its input contract."""

    def __init__(self, path: str | Path, threads: int | None = None, arena: bool = False) -> None:
        """Open ``path``; ``threads`` caps onnxruntime's intra-op threads (default: all).

        The CPU memory arena is off by default: it rounds allocations up and keeps them,
        which costs a small device several MiB for no measurable speed.
        """
        self.path = Path(path)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = arena
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # A plain file goes to onnxruntime by name, so no Python copy of it stays alive.
        source: bytes | str = str(self.path)
        if _is_zstd(self.path):
            source = read_model_bytes(self.path)
        try:
            self.session = ort.InferenceSession(source, options,
                                                providers=["CPUExecutionProvider"])
        except _ORT_ERRORS as exc:
            raise ModelError(f"onnxruntime cannot load the model: {exc}",
                             path=str(self.path)) from exc
        first = self.session.get_inputs()[0]
        self.input_name: str = first.name
        dims = first.shape[1:]
        self.input_shape: tuple[int, ...] | None = (
            tuple(int(d) for d in dims) if all(isinstance(d, int) for d in dims) else None
        )
        self.metadata: Mapping[str, str] = dict(
            self.session.get_modelmeta().custom_metadata_map
        )

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise DataError("inputs do not fit the model", expected=self.input_shape,
                            got=tuple(x.shape[1:]))
        return x

    def predict(self, x: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Logits (float32, one row per input) for an NCHW float32 batch of any size."""
        x = self._check(x)
        try:
            parts = [
                self.session.run(None, {self.input_name: x[i : i + batch_size]})[0]
                for i in range(0, len(x), batch_size)
            ]
        except _ORT_ERRORS as exc:
            raise ModelError(f"onnxruntime failed to run the model: {exc}",
                             path=str(self.path)) from exc
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def classify(self, x: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """The top-1 class of each input."""
        return self.predict(x, batch_size).argmax(axis=1)

    def feed(self, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
        """One input of exactly ``batch`` rows, tiled from ``x``."""
        x = self._check(x)
        reps = -(-batch // max(len(x), 1))
        return {self.input_name: np.ascontiguousarray(np.concatenate([x] * reps)[:batch])}

    def latency_ms(self, x: np.ndarray, batch: int, runs: int) -> float:
        """Best wall time (ms) of ``runs`` calls on ``batch`` inputs tiled from ``x``."""
        return paired_latency_ms([self], x, batch, runs)[0]


def paired_latency_ms(
    runners: Sequence[Runner], x: np.ndarray, batch: int, runs: int
) -> list[float]:
    """Best call time (ms) of each runner on the same batch over ``runs`` rounds.

    The minimum is the figure least disturbed by other processes (as ``timeit`` reports),
    and timing the runners in alternation spreads any remaining load over all of them
    alike. Two untimed calls each warm up first.
    """
    feeds = [r.feed(x, batch) for r in runners]
    for runner, feed in zip(runners, feeds, strict=True):
        for _ in range(2):
            runner.session.run(None, feed)
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(max(runs, 1)):
        for i, (runner, feed) in enumerate(zip(runners, feeds, strict=True)):
            start = time.perf_counter()
            runner.session.run(None, feed)
            times[i].append(time.perf_counter() - start)
    return [min(t) * 1e3 for t in times]


def verification_worker(job: dict[str, Any]) -> None:
    """Run in a spawned process: outputs and latencies of a model, written to files.

    ``job`` holds only paths and numbers; results go to ``outputs.npy`` and
    ``result.json`` in ``job["out_dir"]`` (no pickled data crosses the process boundary).
    """
    out_dir = Path(job["out_dir"])
    cpu = cpu_info()
    result: dict[str, Any] = {"ok": False, "cpu": cpu.describe(),
                              "saturating_u8s8": cpu.saturating_u8s8}
    try:
        x = np.load(job["inputs"], allow_pickle=False)
        runner = Runner(job["model"], threads=job.get("threads"))
        np.save(out_dir / "outputs.npy", runner.predict(x), allow_pickle=False)
        runs = int(job.get("latency_runs", 20))
        if runs > 0:
            timed = [runner]
            if job.get("dense"):
                timed.append(Runner(job["dense"], threads=job.get("threads")))
            b1 = paired_latency_ms(timed, x, 1, runs * 5)
            b64 = paired_latency_ms(timed, x, 64, runs)
            result["latency_b1_ms"], result["latency_b64_ms"] = b1[0], b64[0]
            if len(timed) > 1:
                result["dense_latency_b1_ms"], result["dense_latency_b64_ms"] = b1[1], b64[1]
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the parent
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["trace"] = traceback.format_exc(limit=5)
    (out_dir / "result.json").write_text(json.dumps(result))
