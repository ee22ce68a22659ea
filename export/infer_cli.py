"""``mpfl-infer``: run an exported model on images, on the device, without torch.

Reads the dataset formats the toolkit reads (``mpfl.ml.data``, which needs only numpy),
an ``.npz`` with ``x`` (and optionally ``y``), or an ``.npy`` of preprocessed NCHW
images; prints predictions, accuracy when labels exist, and latency.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from export.runner import BATCH_SIZE, INT8_BATCH_NOTE, Runner
from mpfl.errors import ConfigError, DataError, reports_errors
from mpfl.ml.data import DATASETS, load_dataset


@dataclass(frozen=True)
class Images:
    x: np.ndarray
    y: np.ndarray | None
    source: str


def _read_array_file(path: Path) -> Images:
    """``.npy`` (images only) or ``.npz`` (``x``, optional ``y``), already preprocessed."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            x, y = loaded, None
        else:
            with loaded as f:
                x = f["x"]
                y = f["y"] if "y" in f.files else None
    except (OSError, EOFError, KeyError, ValueError) as exc:
        raise DataError(f"cannot read images: {exc}", path=str(path)) from exc
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError("images must be N,C,H,W (or N,H,W)", path=str(path), got=x.shape)
    if y is not None:
        y = np.asarray(y).astype(np.int64)
        if y.shape != (len(x),):
            raise DataError("labels must be one integer per image", path=str(path))
    return Images(x, y, path.name)


def load_images(path: Path | None, dataset: str | None, split: str) -> Images:
    """Images to classify, from ``--input`` / ``--dataset``."""
    if dataset is None and path is not None and path.suffix in (".npy", ".npz"):
        return _read_array_file(path)
    if dataset is None:
        raise ConfigError("cannot tell the input format: pass --dataset "
                          f"({', '.join(DATASETS)}) or an .npy / .npz file")
    if dataset == "npz":
        if path is None:
            raise ConfigError("--dataset npz needs --input FILE.npz")
        return _read_array_file(path)
    if path is None and dataset != "digits":
        raise ConfigError(f"--dataset {dataset} needs --input DIRECTORY")
    data = load_dataset(dataset, path, split)
    return Images(data.x, data.y, f"{dataset} {split} split")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--input", "input_path", type=click.Path(path_type=Path), default=None,
              help="Dataset directory, .npz (x[, y]) or .npy of preprocessed images.")
@click.option("--dataset", type=click.Choice(DATASETS), default=None,
              help="Format of --input (default: the one recorded in the model).")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=BATCH_SIZE, show_default=True,
              help="Images per onnxruntime call (the export report's batch, by default).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="onnxruntime threads (default: all cores).")
@click.option("--show", type=click.IntRange(min=0), default=10, show_default=True,
              help="Predictions to print.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
@reports_errors
def main(
    model: Path, input_path: Path | None, dataset: str | None, split: str, limit: int | None,
    batch_size: int, threads: int | None, show: int, as_json: bool,
) -> None:
    """Classify images with MODEL (.onnx or .onnx.zst) using onnxruntime only."""
    runner = Runner(model, threads=threads)
    is_array_file = input_path is not None and input_path.suffix in (".npy", ".npz")
    if dataset is None and not is_array_file:
        dataset = runner.metadata.get("mpfl.dataset")
    images = load_images(input_path, dataset, split)
    x, y = images.x, images.y
    if limit is not None:
        x, y = x[:limit], (y[:limit] if y is not None else None)
    start = time.perf_counter()
    predictions = runner.classify(x, batch_size)
    seconds = time.perf_counter() - start
    batches = max(-(-len(x) // batch_size), 1)
    accuracy = float((predictions == y).mean()) if y is not None and len(y) else None
    doc = {
        "model": str(model), "images": int(len(x)), "source": images.source,
        "accuracy": accuracy, "seconds": seconds, "batch_size": batch_size,
        "ms_per_batch": seconds / batches * 1e3, "ms_per_image": seconds / max(len(x), 1) * 1e3,
        "predictions": predictions[:show].tolist(),
    }
    if as_json:
        click.echo(json.dumps(doc))
        return
    for i in range(min(show, len(x))):
        label = f"  (label {y[i]})" if y is not None else ""
        click.echo(f"{i:>6}  {predictions[i]}{label}")
    click.echo(f"images    {len(x)} from {images.source}")
    if accuracy is not None:
        click.echo(f"accuracy  {accuracy:.2%}")
        if runner.metadata.get("mpfl.precision") == "int8":
            click.echo(f"          ({INT8_BATCH_NOTE.format(batch=BATCH_SIZE)}; this run: "
                       f"{batch_size})")
    click.echo(f"latency   {doc['ms_per_batch']:.3f} ms per batch of {batch_size}, "
               f"{doc['ms_per_image']:.4f} ms per image")


if __name__ == "__main__":
    sys.exit(main())
