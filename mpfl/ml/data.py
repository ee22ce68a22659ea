"""Datasets read from standard files on disk (never downloaded) and their partitions.

Supported: MNIST and Fashion-MNIST (IDX ``.gz``), CIFAR-10 (python batches, any subset
of batch files present), a user ``.npz`` (arrays ``x`` and ``y``), and ``digits``, the
8x8 handwritten digits bundled with scikit-learn, as the default that works anywhere.
Images come out as float32 NCHW, normalised per dataset; labels as int64.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpfl.errors import ConfigError, DataError

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "npz")
_NORMALISE = {  # per-channel mean and std of the training split
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "digits": ((0.3050,), (0.3800,)),
}


@dataclass(frozen=True)
class Dataset:
    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, index: np.ndarray) -> Dataset:
        return Dataset(self.name, self.x[index], self.y[index], self.num_classes)


def _normalise(name: str, images: np.ndarray) -> np.ndarray:
    """uint8-scale NCHW images -> float32 standardised with the dataset's statistics."""
    mean, std = _NORMALISE[name]
    x = images.astype(np.float32) / 255.0
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return (x - m) / s


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzipped or not) as a uint8 array of its declared shape."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file: {exc}", path=str(path)) from exc
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError("not an IDX file of unsigned bytes", path=str(path))
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError("IDX header is truncated", path=str(path))
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(dims):  # exact, where np.prod could overflow
        raise DataError("IDX data length does not match its header", path=str(path))
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


_IDX_FILES = {"train": "train-{}-idx{}-ubyte", "test": "t10k-{}-idx{}-ubyte"}


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"missing file {stem}.gz (or {stem}); point --data-dir at the directory "
                    "that holds mnist/ or fashion-mnist/ with the standard IDX files",
                    path=str(directory))


Select = Callable[[np.ndarray], np.ndarray]
"""Given all labels of a split, the indices to keep (a node's partition)."""


def _build(name: str, images: np.ndarray, labels: np.ndarray, select: Select | None) -> Dataset:
    """Select on the raw uint8 images first, so a node never holds the normalised
    float32 copy of the whole split (4x its bytes) just to keep its own share."""
    labels = labels.astype(np.int64)
    if select is not None:
        index = select(labels)
        images, labels = images[index], labels[index]
    return Dataset(name, _normalise(name, images), labels, 10)


def load_idx_dataset(
    name: str, directory: Path, split: str, select: Select | None = None
) -> Dataset:
    pattern = _IDX_FILES[split]
    images = read_idx(_find(directory, pattern.format("images", 3)))
    labels = read_idx(_find(directory, pattern.format("labels", 1)))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError("IDX images and labels do not match", path=str(directory))
    return _build(name, images[:, None], labels, select)


class _ArrayUnpickler(pickle.Unpickler):
    """Reads the CIFAR-10 python batches, refusing anything but plain data and arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays in pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # how a Python 3 protocol-2 pickle spells a bytes object
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in a data batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError,
            AttributeError, IndexError, struct.error) as exc:  # what malformed pickles raise
        raise DataError(f"not a CIFAR-10 batch: {exc}", path=str(path)) from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError("CIFAR-10 batch has the wrong shape", path=str(path))
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(
    directory: Path, split: str, batches: list[str] | None = None, select: Select | None = None
) -> Dataset:
    if (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    if batches is None:
        batches = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    present = [directory / b for b in batches if (directory / b).is_file()]
    if not present:
        raise DataError(f"no CIFAR-10 {split} batch found ({', '.join(batches[:2])}"
                        f"{', ...' if len(batches) > 2 else ''}); point --data-dir at the "
                        "directory that holds cifar-10/cifar-10-batches-py/ (the python "
                        "version)", path=str(directory))
    parts = [_read_cifar_batch(p) for p in present]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return _build("cifar10", images, labels, select)


def load_digits(split: str, test_fraction: float = 0.25, select: Select | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits, split by a fixed permutation."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = (bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    cut = int(len(labels) * (1 - test_fraction))
    index = order[:cut] if split == "train" else order[cut:]
    return _build("digits", images[index], labels[index], select)


def load_npz(path: Path) -> Dataset:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with loaded as f:
            x, y = np.asarray(f["x"], dtype=np.float32), np.asarray(f["y"], dtype=np.int64)
    except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile,
            zlib.error) as exc:
        raise DataError(f"cannot read npz dataset (needs arrays x and y): {exc}",
                        path=str(path)) from exc
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(y) == 0 or y.min() < 0:
        raise DataError("npz x must be N,C,H,W (or N,H,W) with one label >= 0 per image",
                        path=str(path))
    return Dataset("npz", x, y, int(y.max()) + 1)


def load_labels(name: str, data_dir: str | Path | None, split: str = "train") -> np.ndarray:
    """Only a split's labels: partitioning needs no normalised pixels."""
    seen: list[np.ndarray] = []

    def keep_none(labels: np.ndarray) -> np.ndarray:
        seen.append(labels)
        return labels[:0]

    load_dataset(name, data_dir, split, select=keep_none)
    return seen[0]


def load_dataset(
    name: str, data_dir: str | Path | None, split: str = "train", select: Select | None = None
) -> Dataset:
    """Load ``name`` ('digits', 'mnist', 'fashion-mnist', 'cifar10', 'npz') from disk,
    keeping only the samples ``select`` picks from the split's labels."""
    if split not in ("train", "test"):
        raise ConfigError(f"unknown split '{split}' (known: train, test)")
    if name == "digits":
        return load_digits(split, select=select)
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")
    if data_dir is None:
        raise ConfigError(f"dataset '{name}' needs a data directory (--data-dir or MPFL_DATA_DIR)")
    root = Path(data_dir)
    if name == "npz":
        data = load_npz(root / f"{split}.npz" if root.is_dir() else root)
        return data if select is None else data.subset(select(data.y))
    sub = root / name if (root / name).is_dir() else root
    if not sub.is_dir():
        raise DataError("data directory does not exist", path=str(sub))
    if name == "cifar10":
        cifar = root / "cifar-10" if (root / "cifar-10").is_dir() else sub
        return load_cifar10(cifar, split, select=select)
    return load_idx_dataset(name, sub, split, select)
