"""Mask benchmarks: coded size and speed of each mask codec against the entropy bound.

Run as `python benchmarks/bench_masks.py`; prints a table and writes
benchmarks/results/masks.json. Each measurement is one function returning a list of
rows (dicts), so further measurements can be added next to `measure_mask_coding`.
"""

from __future__ import annotations

import json
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import zstandard
from threadpoolctl import threadpool_limits

from mpfl.maths.votes import VoteAccumulator
from mpfl.wire import MaskCodec, binary_entropy, decode_mask, encode_mask

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "masks.json"
DENSITIES = (0.5, 0.25, 0.1, 0.05, 0.01)
N_UNITS = 1_000_000


def random_mask(n: int, p: float, seed: int = 0) -> np.ndarray:
    """Exactly round(p * n) ones at random positions."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[: round(p * n)]] = True
    return mask


def _best_ms(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _row(p: float, n: int, codec: str, payload_bytes: int, enc_ms: float, dec_ms: float
         ) -> dict[str, Any]:
    entropy = binary_entropy(p)
    bits = 8 * payload_bytes / n
    return {
        "n_units": n,
        "density": p,
        "codec": codec,
        "payload_bytes": payload_bytes,
        "bits_per_unit": bits,
        "entropy_bits_per_unit": entropy,
        "ratio_to_entropy": bits / entropy if entropy else None,
        "encode_ms": enc_ms,
        "decode_ms": dec_ms,
    }


def _measure_codec(mask: np.ndarray, p: float, codec: str, repeats: int) -> dict[str, Any]:
    n = mask.size
    codec_id, payload = encode_mask(mask, codec=codec)
    if not np.array_equal(decode_mask(codec_id, payload, n), mask):
        raise AssertionError(f"{codec} does not round-trip at p={p}")
    enc_ms = _best_ms(lambda: encode_mask(mask, codec=codec), repeats)
    dec_ms = _best_ms(lambda: decode_mask(codec_id, payload, n), repeats)
    label = f"auto ({codec_id.name.lower()})" if codec == "auto" else codec
    return _row(p, n, label, len(payload), enc_ms, dec_ms)


def _measure_zstd(mask: np.ndarray, p: float, repeats: int) -> dict[str, Any]:
    """zstd-19 on packed bits: a reference point, not a wire codec."""
    packed = np.packbits(mask).tobytes()
    compressor = zstandard.ZstdCompressor(level=19)
    decompressor = zstandard.ZstdDecompressor()
    compressed = compressor.compress(packed)

    def decode() -> np.ndarray:
        return np.unpackbits(np.frombuffer(decompressor.decompress(compressed), dtype=np.uint8))

    enc_ms = _best_ms(lambda: compressor.compress(packed), max(1, repeats // 2))
    dec_ms = _best_ms(decode, repeats)
    return _row(p, mask.size, "zstd-19 (ref)", len(compressed), enc_ms, dec_ms)


def measure_mask_coding(
    n: int = N_UNITS, densities: Sequence[float] = DENSITIES, repeats: int = 5, seed: int = 0
) -> list[dict[str, Any]]:
    """Bits per unit and encode/decode time of every mask codec, `auto`, and zstd-19."""
    rows: list[dict[str, Any]] = []
    for p in densities:
        mask = random_mask(n, p, seed)
        for codec in [*(c.name.lower() for c in MaskCodec), "auto"]:
            rows.append(_measure_codec(mask, p, codec, repeats))
        rows.append(_measure_zstd(mask, p, repeats))
    return rows


def format_mask_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'p':>5} {'codec':<14} {'bits/unit':>9} {'H(p)':>7} {'x H':>6} "
        f"{'enc ms':>7} {'dec ms':>7}"
    ]
    for r in rows:
        ratio = f"{r['ratio_to_entropy']:.3f}" if r["ratio_to_entropy"] else "-"
        lines.append(
            f"{r['density']:>5} {r['codec']:<14} {r['bits_per_unit']:>9.4f} "
            f"{r['entropy_bits_per_unit']:>7.4f} {ratio:>6} "
            f"{r['encode_ms']:>7.2f} {r['decode_ms']:>7.2f}"
        )
    return "\n".join(lines)


N_VOTE_MASKS = (100, 1_000)


def _packed_masks(n_masks: int, n: int, seed: int = 0) -> np.ndarray:
    """Random bit-packed masks, one row each, as they arrive off the wire."""
    return np.random.default_rng(seed).integers(0, 256, (n_masks, (n + 7) // 8), np.uint8)


def _vote_bit_sliced(masks: np.ndarray, n: int) -> VoteAccumulator:
    acc = VoteAccumulator(n)
    for row in masks:
        acc.add_packed(row)
    return acc


def _vote_unpack_loop(masks: np.ndarray, n: int) -> np.ndarray:
    """The plain alternative: unpack each mask into an int32 counter."""
    counts = np.zeros(n, dtype=np.int32)
    for row in masks:
        counts += np.unpackbits(row, count=n)
    return counts


def _median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1e3)
    return statistics.median(runs), runs


def _peak_bytes(fn: Callable[[], object]) -> int:
    """Peak memory ``fn`` allocates (its inputs, made beforehand, are not counted)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure_vote_speed(
    n: int = N_UNITS, mask_counts: Sequence[int] = N_VOTE_MASKS, repeats: int = 3
) -> list[dict[str, Any]]:
    """Streaming vote over packed masks on one core: median time and peak extra memory.

    Masks are generated and packed before timing. The bit-sliced counter's memory grows
    by one bit per unit each time the mask count doubles; the unpack loop's is fixed.
    """
    rows: list[dict[str, Any]] = []
    with threadpool_limits(limits=1):
        all_masks = _packed_masks(max(mask_counts), n)
        for n_masks in mask_counts:
            masks = all_masks[:n_masks]
            if not np.array_equal(
                _vote_bit_sliced(masks, n).counts(), _vote_unpack_loop(masks, n)
            ):
                raise AssertionError("bit-sliced vote counts differ from the plain sum")
            methods: dict[str, Callable[[], object]] = {
                "bit-sliced": partial(_vote_bit_sliced, masks, n),
                "unpack-loop": partial(_vote_unpack_loop, masks, n),
            }
            for method, fn in methods.items():
                median_ms, runs = _median_ms(fn, repeats)
                peak = _peak_bytes(fn)
                rows.append(
                    {
                        "n_units": n,
                        "n_masks": n_masks,
                        "method": method,
                        "ms_median": median_ms,
                        "ms_runs": runs,
                        "peak_extra_bytes": peak,
                        "bits_per_unit": 8 * peak / n,
                    }
                )
        acc = _vote_bit_sliced(all_masks, n)
        tally_ms, runs = _median_ms(acc.tally, repeats)
        rows.append(
            {
                "n_units": n,
                "n_masks": max(mask_counts),
                "method": "tally (shares)",
                "ms_median": tally_ms,
                "ms_runs": runs,
                "peak_extra_bytes": _peak_bytes(acc.tally),
                "bits_per_unit": None,
            }
        )
    return rows


def format_vote_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'masks':>6} {'method':<15} {'ms':>8} {'peak MB':>8} {'bits/unit':>9}"]
    for r in rows:
        bits = f"{r['bits_per_unit']:.2f}" if r["bits_per_unit"] is not None else "-"
        lines.append(
            f"{r['n_masks']:>6} {r['method']:<15} {r['ms_median']:>8.1f} "
            f"{r['peak_extra_bytes'] / 1e6:>8.2f} {bits:>9}"
        )
    return "\n".join(lines)


def write_results(results: dict[str, Any], path: Path = RESULTS_PATH) -> None:
    """Merge `results` into the JSON file, keeping sections other measurements wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing: dict[str, Any] = {}
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = {}
    existing.update(results)
    path.write_text(json.dumps(existing, indent=2) + "\n")


def main() -> None:
    coding = measure_mask_coding()
    print(f"Mask coding, n = {N_UNITS:,} random units (best of 5 runs)")
    print(format_mask_table(coding))
    votes = measure_vote_speed()
    print(f"\nStreaming vote, n = {N_UNITS:,} units, one core (median of 3 runs)")
    print(format_vote_table(votes))
    write_results({"mask_coding": coding, "vote_speed": votes})
    print(f"wrote {RESULTS_PATH}")


if __name__ == "__main__":
    main()
