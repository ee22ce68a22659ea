"""The on-device runner: onnxruntime and numpy only, same answers as the export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _export_helpers import sample_inputs, saved_model, torch_logits
from click.testing import CliRunner

from export.infer_cli import main
from export.onnx_export import export_model, reference_model
from export.options import ExportOptions
from export.runner import Runner
from mpfl.errors import DataError, ModelError

Lenet = tuple[Path, Path, np.ndarray]


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Lenet:
    """LeNet-5 at 90% weight sparsity as .onnx and .onnx.zst, and its torch logits."""
    directory = tmp_path_factory.mktemp("runner")
    saved = saved_model("lenet5", "weight", 0.9, meta={"dataset": "mnist"})
    plain, _ = export_model(saved, directory / "plain.onnx", ExportOptions(), "mnist")
    packed, _ = export_model(saved, directory / "m.onnx", ExportOptions(compress="zstd"), "mnist")
    x = sample_inputs("lenet5", n=20)
    np.save(directory / "x.npy", x)
    return plain.path, packed.path, torch_logits(reference_model(saved)[0], x)


def test_predict_matches_torch_for_plain_and_zstd_files(lenet: Lenet) -> None:
    plain, packed, expected = lenet
    x = np.load(plain.with_name("x.npy"))
    for path in (plain, packed):
        runner = Runner(path, threads=1)
        got = runner.predict(x, batch_size=7)  # batches that do not divide the input
        np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())
        np.testing.assert_array_equal(runner.classify(x), expected.argmax(1))
        assert runner.input_shape == (1, 28, 28)
        assert runner.metadata["mpfl.dataset"] == "mnist"
    assert packed.name.endswith(".onnx.zst")


def test_runner_rejects_bad_files_and_inputs(tmp_path: Path, lenet: Lenet) -> None:
    with pytest.raises(DataError, match="cannot read"):
        Runner(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        Runner(tmp_path / "junk.onnx")
    (tmp_path / "junk.onnx.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 16)
    with pytest.raises(DataError, match="zstd"):
        Runner(tmp_path / "junk.onnx.zst")
    with pytest.raises(DataError, match="do not fit"):
        Runner(lenet[0]).predict(np.zeros((2, 3, 32, 32), dtype=np.float32))


_TORCH_FREE = """
import sys
sys.modules["torch"] = None  # any attempt to import torch now raises ImportError
import numpy as np
import export
from export.infer_cli import main
from export.runner import Runner

model, images = sys.argv[1], sys.argv[2]
logits = Runner(model).predict(np.load(images))
assert logits.shape == (20, 10), logits.shape
main([model, "--input", images, "--show", "2"], standalone_mode=False)
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch" and sys.modules[m])
assert not loaded, loaded
print("torch-free")
"""


def test_runner_and_cli_never_import_torch(lenet: Lenet) -> None:
    _, packed, _ = lenet
    done = subprocess.run(
        [sys.executable, "-c", _TORCH_FREE, str(packed), str(packed.with_name("x.npy"))],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("torch-free")
    assert "latency" in done.stdout


def test_infer_cli_on_labelled_npz(tmp_path: Path, lenet: Lenet) -> None:
    _, packed, expected = lenet
    x = np.load(packed.with_name("x.npy"))
    labels = expected.argmax(1)
    np.savez(tmp_path / "set.npz", x=x, y=labels)
    result = CliRunner().invoke(main, [str(packed), "--input", str(tmp_path / "set.npz"),
                                       "--json", "--show", "20"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["accuracy"] == 1.0 and doc["images"] == 20
    assert doc["predictions"] == labels.tolist()


def test_infer_cli_mistakes(tmp_path: Path, lenet: Lenet) -> None:
    plain = str(lenet[0])
    runner = CliRunner()
    no_format = runner.invoke(main, [plain, "--input", str(tmp_path), "--dataset", "npz"])
    assert no_format.exit_code == 3  # a directory is not an .npz file
    wrong = np.zeros((3, 3, 32, 32), dtype=np.float32)
    np.save(tmp_path / "cifar.npy", wrong)
    misfit = runner.invoke(main, [plain, "--input", str(tmp_path / "cifar.npy")])
    assert misfit.exit_code == 3 and "do not fit" in misfit.stderr
    missing = runner.invoke(main, [str(tmp_path / "none.onnx"), "--dataset", "digits"])
    assert missing.exit_code == 3 and "Traceback" not in missing.output


@pytest.mark.data
def test_infer_cli_reads_the_mnist_directory(
    mnist_dir: Path, lenet: Lenet
) -> None:
    _, packed, _ = lenet
    # The dataset comes from the model's metadata: the directory is enough.
    result = CliRunner().invoke(main, [str(packed), "--input", str(mnist_dir), "--limit", "300"])
    assert result.exit_code == 0, result.output
    assert "300 from mnist test split" in result.stdout
    assert "accuracy" in result.stdout


def test_public_api_is_deliberate() -> None:
    import export

    assert export.__all__ == sorted(export.__all__)
    for name in export.__all__:
        assert getattr(export, name) is not None
    with pytest.raises(AttributeError):
        export.no_such_name  # noqa: B018
