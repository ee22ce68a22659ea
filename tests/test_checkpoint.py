"""Checkpoints: npz + JSON, no pickle, atomic writes, every mismatch a ModelError."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import IO

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpfl.errors import ModelError
from mpfl.ml.checkpoint import (
    MASK_KEY,
    SavedModel,
    atomic_write,
    load_model,
    read_npz,
    save_model,
    write_json,
)
from mpfl.ml.models import ModelSpec, build_model
from mpfl.ml.units import build_unit_map, model_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = ModelSpec("mlp", {"image_size": 4, "hidden": [6, 5]})


def _saved(granularity: str = "filter", seed: int = 0, density: float = 0.5) -> SavedModel:
    model = build_model(SPEC, seed=seed)
    umap = build_unit_map(model, SPEC, granularity)
    mask = np.random.default_rng(seed).random(umap.n_units) < density
    return SavedModel(SPEC, granularity, model_state(model), mask, {"round": 3, "acc": 0.5})


@settings(max_examples=20)
@given(st.sampled_from(["filter", "weight"]), st.integers(0, 1000), st.floats(0, 1))
def test_save_load_round_trip(granularity: str, seed: int, density: float) -> None:
    import tempfile

    saved = _saved(granularity, seed, density)
    with tempfile.TemporaryDirectory() as tmp:
        save_model(Path(tmp) / "ckpt", saved)
        loaded = load_model(Path(tmp) / "ckpt")
    assert loaded.spec == saved.spec and loaded.granularity == granularity
    assert loaded.meta == saved.meta
    np.testing.assert_array_equal(loaded.mask, saved.mask)
    expected = saved.unit_map().apply(saved.state, saved.mask)  # pruned positions zero
    assert list(loaded.state) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(loaded.state[name], expected[name])


def test_files_hold_no_pickle_and_describe_the_model(tmp_path: Path) -> None:
    saved = _saved()
    save_model(tmp_path, saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.npz"]
    arrays = read_npz(tmp_path / "model.npz")  # allow_pickle=False inside
    assert MASK_KEY in arrays and arrays[MASK_KEY].dtype == bool
    doc = json.loads((tmp_path / "model.json").read_text())
    assert doc["fingerprint"] == saved.unit_map().fingerprint.hex()
    assert doc["model"] == {"name": "mlp", "args": SPEC.args} and doc["granularity"] == "filter"


def test_load_accepts_files_and_run_directories(tmp_path: Path) -> None:
    saved = _saved()
    save_model(tmp_path / "run" / "final", saved)
    final = tmp_path / "run" / "final"
    for path in (tmp_path / "run", final, final / "model.json", final / "model.npz"):
        np.testing.assert_array_equal(load_model(path).mask, saved.mask)
    with pytest.raises(ModelError):
        load_model(tmp_path / "nothing-here")


def _edit_json(directory: Path, **changes: object) -> None:
    doc = json.loads((directory / "model.json").read_text())
    doc.update(changes)
    (directory / "model.json").write_text(json.dumps(doc))


def _edit_npz(directory: Path, change: dict[str, np.ndarray | None]) -> None:
    arrays = read_npz(directory / "model.npz")
    for key, value in change.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(directory / "model.npz", **arrays)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda d: _edit_json(d, fingerprint="00" * 8),
        lambda d: _edit_json(d, granularity="weight"),  # another unit map: fingerprint differs
        lambda d: _edit_json(d, model={"name": "mlp", "args": {"image_size": 5}}),
        lambda d: _edit_json(d, model={"name": "nope"}),
        lambda d: _edit_json(d, model="mlp"),
        lambda d: _edit_json(d, meta=[1, 2]),
        lambda d: (d / "model.json").write_text("{not json"),
        lambda d: _edit_npz(d, {MASK_KEY: None}),
        lambda d: _edit_npz(d, {MASK_KEY: np.ones(3, dtype=bool)}),
        lambda d: _edit_npz(d, {"net.1.weight": None}),
        lambda d: _edit_npz(d, {"net.1.weight": np.zeros((6, 15), np.float32)}),
        lambda d: _edit_npz(d, {"net.1.bias": np.zeros(1, np.float32)}),
        lambda d: (d / "model.npz").write_bytes(b"PK\x03\x04 broken"),
        lambda d: (d / "model.npz").write_bytes(b"garbage"),
        lambda d: (d / "model.npz").unlink(),
    ],
)
def test_broken_checkpoints_raise_model_error(tmp_path: Path, corrupt: object) -> None:
    save_model(tmp_path, _saved())
    corrupt(tmp_path)  # type: ignore[operator]
    with pytest.raises(ModelError):
        load_model(tmp_path)


def test_a_checkpoint_cannot_smuggle_values_into_pruned_positions(tmp_path: Path) -> None:
    saved = _saved()
    save_model(tmp_path, saved)
    umap = saved.unit_map()
    layer = umap.layers[0]
    dead = int(np.flatnonzero(~saved.mask[layer.units])[0])
    weight = read_npz(tmp_path / "model.npz")[layer.tensor]
    weight[dead] = 7.0
    _edit_npz(tmp_path, {layer.tensor: weight})
    assert np.all(load_model(tmp_path).state[layer.tensor][dead] == 0)


def test_save_refuses_a_mask_or_state_that_does_not_fit(tmp_path: Path) -> None:
    saved = _saved()
    with pytest.raises(ModelError):
        save_model(tmp_path / "a", SavedModel(SPEC, "filter", saved.state, np.ones(2, bool)))
    state = dict(saved.state)
    state.pop("net.1.weight")
    with pytest.raises(ModelError):
        save_model(tmp_path / "b", SavedModel(SPEC, "filter", state, saved.mask))
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    write_json(path, {"v": 1})

    def explode(f: IO[bytes]) -> None:
        f.write(b"half a docu")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(path, explode)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]  # no temp file left behind


def test_npz_written_is_a_plain_zip_of_npy_files(tmp_path: Path) -> None:
    save_model(tmp_path, _saved())
    with zipfile.ZipFile(tmp_path / "model.npz") as z:
        assert all(name.endswith(".npy") for name in z.namelist())
