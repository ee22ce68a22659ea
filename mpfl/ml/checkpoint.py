"""Model checkpoints on disk: arrays in ``.npz`` (no pickle) plus a JSON description.

A checkpoint is a directory holding ``model.npz`` (every state tensor, pruned positions
already zero, plus the unit mask under the key ``__mask__``) and ``model.json`` (model spec,
granularity, fingerprint, free-form metadata). Writes are atomic: temp file, fsync, rename,
so a crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from mpfl.errors import ModelError
from mpfl.ml.models import ModelSpec, build_model
from mpfl.ml.units import State, UnitMap, build_unit_map

MASK_KEY = "__mask__"


def atomic_write(
    path: Path, write: Callable[[IO[bytes]], object], durable: bool = True
) -> None:
    """Write through ``write`` into a temp file beside ``path``, fsync, then rename.

    ``durable=False`` skips the fsyncs (still never half-written): for files derived from
    a checkpoint, which a crash can only leave one round behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide models and metrics from other users
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable: after a power cut (an SD card on a Pi) the directory
    entry could otherwise still name the old file."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform that cannot open directories: the rename is the best we get
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: Path, doc: Any, durable: bool = True, indent: int | None = 2) -> None:
    """``indent=None``: one line, by json's C encoder (the indenting one is pure Python)."""
    data = json.dumps(doc, indent=indent, sort_keys=True).encode()
    atomic_write(path, lambda f: f.write(data), durable)


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    atomic_write(path, lambda f: np.savez(f, **dict(arrays)))  # type: ignore[arg-type]


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with loaded as f:
            return {k: f[k] for k in f.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise ModelError(f"cannot read arrays: {exc}", path=str(path)) from exc


@dataclass(frozen=True)
class SavedModel:
    spec: ModelSpec
    granularity: str
    state: State
    mask: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def unit_map(self) -> UnitMap:
        return build_unit_map(build_model(self.spec), self.spec, self.granularity)


def save_model(directory: Path, saved: SavedModel) -> None:
    unit_map = saved.unit_map()
    unit_map.check_mask(saved.mask)
    arrays = dict(unit_map.apply(saved.state, saved.mask))
    arrays[MASK_KEY] = saved.mask
    # The arrays land before the description: a reader never sees a JSON without its data.
    write_npz(directory / "model.npz", arrays)
    write_json(directory / "model.json", {
        "model": {"name": saved.spec.name, "args": saved.spec.args},
        "granularity": saved.granularity,
        "fingerprint": unit_map.fingerprint.hex(),
        "meta": saved.meta,
    })


def load_model(path: Path) -> SavedModel:
    """Load a checkpoint directory (or the ``model.json`` / ``model.npz`` inside it)."""
    directory = path.parent if path.is_file() else path
    if not (directory / "model.json").is_file():
        for candidate in (directory / "final", directory / "checkpoint"):
            if (candidate / "model.json").is_file():
                directory = candidate
                break
        else:
            raise ModelError("no model.json found (expected a run or checkpoint directory)",
                             path=str(path))
    try:
        doc = json.loads((directory / "model.json").read_text())
        spec = ModelSpec.from_dict(doc["model"])
        granularity = str(doc["granularity"])
        meta = dict(doc.get("meta") or {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"bad model.json: {exc}", path=str(directory)) from exc
    arrays = read_npz(directory / "model.npz")
    if MASK_KEY not in arrays:
        raise ModelError("model.npz has no mask", path=str(directory))
    mask = arrays.pop(MASK_KEY).astype(bool)
    unit_map = SavedModel(spec, granularity, arrays, mask).unit_map()
    if unit_map.fingerprint.hex() != doc.get("fingerprint"):
        raise ModelError("checkpoint fingerprint does not match its model", path=str(directory))
    missing = [name for name, _ in unit_map.shapes if name not in arrays]
    if missing:
        raise ModelError(f"checkpoint lacks tensors: {', '.join(missing)}", path=str(directory))
    unit_map.check_mask(mask)
    # Shapes are checked, and a pruned position is zero even if the file said otherwise.
    state = unit_map.apply(arrays, mask)
    return SavedModel(spec, granularity, state, mask, meta)
