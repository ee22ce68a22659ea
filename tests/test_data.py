"""Dataset readers: hand-made IDX, CIFAR and npz files, hostile inputs, and the real data."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from mpfl.errors import ConfigError, DataError
from mpfl.ml.data import (
    Dataset,
    load_cifar10,
    load_dataset,
    load_digits,
    load_idx_dataset,
    load_labels,
    load_npz,
    read_idx,
)

CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)


def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format: two zero bytes, type 0x08 (ubyte), ndim, big-endian u32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_pair(directory: Path, prefix: str, images: np.ndarray, labels: np.ndarray,
                    gz: bool = True) -> None:
    for kind, array, dims in (("images", images, 3), ("labels", labels, 1)):
        name = directory / f"{prefix}-{kind}-idx{dims}-ubyte"
        raw = _idx_bytes(array)
        if gz:
            name.with_name(name.name + ".gz").write_bytes(gzip.compress(raw))
        else:
            name.write_bytes(raw)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_returns_the_declared_array(tmp_path: Path, gz: bool) -> None:
    array = np.random.default_rng(0).integers(0, 256, (3, 4, 5)).astype(np.uint8)
    raw = _idx_bytes(array)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    got = read_idx(path)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda raw: raw[:-1],  # data truncated
        lambda raw: raw + b"\x00",  # trailing data
        lambda raw: raw[:6],  # header truncated
        lambda raw: b"\x00\x01" + raw[2:],  # wrong magic
        lambda raw: raw[:2] + b"\x0d" + raw[3:],  # float data, not ubyte
        lambda raw: b"",  # empty
        lambda raw: gzip.compress(raw)[:-8],  # truncated gzip
        lambda raw: (lambda z: z[:12] + bytes(b ^ 0xFF for b in z[12:20]) + z[20:])(
            gzip.compress(raw)),  # corrupt deflate stream
    ],
)
def test_bad_idx_files_raise_data_error(tmp_path: Path, mangle: object) -> None:
    raw = _idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    path = tmp_path / "bad.idx"
    path.write_bytes(mangle(raw))  # type: ignore[operator]
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_idx_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        read_idx(tmp_path / "nope.gz")
    with pytest.raises(DataError):
        load_idx_dataset("mnist", tmp_path, "train")


def test_idx_dataset_from_hand_made_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    _write_idx_pair(tmp_path, "t10k", images, labels, gz=False)
    data = load_dataset("mnist", tmp_path, "test")
    assert data.x.shape == (7, 1, 28, 28) and data.x.dtype == np.float32
    assert data.y.dtype == np.int64
    np.testing.assert_array_equal(data.y, labels)
    # the same ordering of pixel values after normalisation (a monotone map)
    flat_x, flat_images = data.x.reshape(7, -1), images.reshape(7, -1).astype(float)
    assert np.all(np.diff(flat_x[0][np.argsort(flat_images[0], kind="stable")]) >= 0)


def test_idx_images_and_labels_must_agree(tmp_path: Path) -> None:
    _write_idx_pair(tmp_path, "train", np.zeros((5, 2, 2), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(DataError):
        load_idx_dataset("mnist", tmp_path, "train")


def _cifar_batch(n: int, seed: int) -> tuple[dict[bytes, object], np.ndarray, list[int]]:
    """A batch in the standard python format: rows of 1024 R, then G, then B bytes."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    batch: dict[bytes, object] = {
        b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": data,
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }
    return batch, data, labels


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_batch_reader_decodes_the_standard_layout(tmp_path: Path, protocol: int) -> None:
    batch_dir = tmp_path / "cifar-10-batches-py"
    batch_dir.mkdir()
    batch, data, labels = _cifar_batch(6, seed=0)
    (batch_dir / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    got = load_cifar10(tmp_path, "test")
    assert got.x.shape == (6, 3, 32, 32) and got.x.dtype == np.float32
    np.testing.assert_array_equal(got.y, labels)
    pixels = got.x * CIFAR_STD[None, :, None, None] + CIFAR_MEAN[None, :, None, None]
    n, c, i, j = 4, 2, 7, 30  # blue channel, row 7, column 30 of image 4
    assert pixels[n, c, i, j] * 255 == pytest.approx(float(data[n, c * 1024 + i * 32 + j]),
                                                     abs=1e-3)
    np.testing.assert_allclose(pixels * 255, data.reshape(6, 3, 32, 32), atol=1e-3)


def test_cifar_train_split_uses_the_data_batches_present(tmp_path: Path) -> None:
    sizes = {"data_batch_1": 3, "data_batch_3": 5}
    for i, (name, n) in enumerate(sizes.items()):
        (tmp_path / name).write_bytes(pickle.dumps(_cifar_batch(n, seed=i)[0]))
    assert len(load_cifar10(tmp_path, "train")) == 8
    with pytest.raises(DataError):
        load_cifar10(tmp_path, "test")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_cifar_pickle_is_refused_without_running_anything(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    batch, _, _ = _cifar_batch(2, seed=0)
    batch[b"data"] = _Evil(marker)
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(batch))
    assert b"system" in path.read_bytes()
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path, "test")
    assert "system" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x80\x05garbage",
        b"\x80\x09",  # unknown protocol
        pickle.dumps([1, 2, 3]),
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}),  # no labels
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}),
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
    ],
)
def test_malformed_cifar_batches_raise_data_error(tmp_path: Path, payload: bytes) -> None:
    (tmp_path / "test_batch").write_bytes(payload)
    with pytest.raises(DataError):
        load_cifar10(tmp_path, "test")


def test_npz_loader_adds_a_channel_and_counts_classes(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((5, 6, 6)).astype(np.float32)
    y = np.array([0, 3, 1, 3, 2])
    np.savez(tmp_path / "train.npz", x=x, y=y)
    data = load_dataset("npz", tmp_path, "train")
    assert data.shape == (1, 6, 6) and data.num_classes == 4
    np.testing.assert_array_equal(data.x[:, 0], x)
    np.testing.assert_array_equal(data.y, y)
    direct = load_npz(tmp_path / "train.npz")
    np.testing.assert_array_equal(direct.x, data.x)


@pytest.mark.parametrize(
    "arrays",
    [
        {"x": np.zeros((3, 1, 2, 2))},  # no y
        {"x": np.zeros((3, 1, 2, 2)), "y": np.zeros(2)},  # length mismatch
        {"x": np.zeros((3, 2, 2)), "y": np.array([0, -1, 1])},  # negative label
        {"x": np.zeros((3, 4)), "y": np.zeros(3)},  # not images
        {"x": np.zeros((3, 1, 2, 2)), "y": np.zeros((3, 1))},  # labels not flat
        {"x": np.zeros((0, 1, 2, 2)), "y": np.zeros(0)},  # empty
        {"x": np.array([object()] * 3), "y": np.zeros(3)},  # needs pickle
    ],
)
def test_bad_npz_datasets_raise_data_error(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(DataError):
        load_npz(path)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04broken zip", b"not numpy at all", "npy"])
def test_files_that_are_not_npz_archives_raise_data_error(
    tmp_path: Path, content: bytes | str
) -> None:
    path = tmp_path / "d.npz"
    if content == "npy":
        with path.open("wb") as f:
            np.save(f, np.zeros(3))
    else:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    with pytest.raises(DataError):
        load_npz(path)


def test_digits_is_split_deterministically_without_overlap() -> None:
    train, test = load_digits("train"), load_digits("test")
    assert train.shape == test.shape == (1, 8, 8)
    assert len(train) + len(test) == 1797 and len(test) == 1797 - int(1797 * 0.75)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert set(np.unique(train.y)) == set(range(10)) and train.num_classes == 10
    again = load_dataset("digits", None, "train")
    np.testing.assert_array_equal(again.x, train.x)
    rows = {r.tobytes() for r in train.x.reshape(len(train), -1)}
    overlap = sum(r.tobytes() in rows for r in test.x.reshape(len(test), -1))
    assert overlap < 0.05 * len(test)  # a few digits repeat pixel for pixel; splits do not


def test_dataset_subset_keeps_name_and_classes() -> None:
    data = Dataset("toy", np.zeros((4, 1, 2, 2), np.float32), np.arange(4), 10)
    part = data.subset(np.array([1, 3]))
    assert len(part) == 2 and part.num_classes == 10 and part.name == "toy"
    np.testing.assert_array_equal(part.y, [1, 3])


def test_load_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(ConfigError):
        load_dataset("mnist", None)
    with pytest.raises(ConfigError):
        load_dataset("digits", None, "validation")
    with pytest.raises(DataError):
        load_dataset("mnist", tmp_path / "absent")
    with pytest.raises(DataError):
        load_dataset("mnist", tmp_path)  # a directory without the files
    with pytest.raises(DataError):
        load_dataset("cifar10", tmp_path)


def _check_images(data: Dataset, shape: tuple[int, int, int], n_min: int, n_max: int) -> None:
    assert data.shape == shape and n_min <= len(data) <= n_max
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    assert set(np.unique(data.y)) == set(range(10))
    assert abs(float(data.x.mean())) < 0.1 and abs(float(data.x.std()) - 1) < 0.1


@pytest.mark.data
def test_real_mnist(mnist_dir: Path) -> None:
    _check_images(load_dataset("mnist", mnist_dir, "test"), (1, 28, 28), 10_000, 10_000)


@pytest.mark.data
def test_real_fashion_mnist(fashion_dir: Path) -> None:
    _check_images(load_dataset("fashion-mnist", fashion_dir, "test"), (1, 28, 28),
                  10_000, 10_000)


@pytest.mark.data
def test_real_cifar10(cifar_dir: Path) -> None:
    # The local copy may lack a few images or batches: at most the official sizes.
    _check_images(load_dataset("cifar10", cifar_dir, "test"), (3, 32, 32), 9_900, 10_000)


def test_load_labels_gives_the_split_labels_without_pixels() -> None:
    labels = load_labels("digits", None, "train")
    assert np.array_equal(labels, load_dataset("digits", None, "train").y)
