"""The ONNX engine on real Omniglot drawings: the exported network embeds and scores as the checkpoint does,
banks cross between the engines, a stale or foreign model.onnx is refused, and `oneshot-gda` predicts
from a model folder without importing torch."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import inference
from pipeline.checkpoints import FILENAME
from pipeline.classifiers.fewshot import SiameseClassifier
from pipeline.classifiers.network import SiameseNet, save_siamese
from pipeline.data.images import ImageSpec, to_tensor
from pipeline.export import ONNX_FILENAME, OnnxModel, export_checkpoint
from tests.drawings import CALIBRATION, SIZE, class_files, class_folders, write_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_thread: None) -> None:
    """Tiny networks: see conftest.single_thread."""


@pytest.fixture(scope="module", params=["contrastive", "bce"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder: a checkpoint (a metric loss, or bce's learned head) and its model.onnx (an export
    takes seconds: once per loss)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(request.param) / "model"
    net = SiameseNet(SIZE, channels=8, embedding_dim=16, loss=request.param)
    save_siamese(net, folder / FILENAME, extra={"verify": dataclasses.asdict(CALIBRATION)})
    assert export_checkpoint(folder) == folder / ONNX_FILENAME
    return folder


@pytest.fixture
def folder(exported: Path, tmp_path: Path) -> Path:
    """This test's copy of `exported`."""
    return Path(shutil.copytree(exported, tmp_path / "model"))


@pytest.fixture
def drawings(novel_drawings: dict[str, list[bytes]], tmp_path: Path) -> tuple[Path, list[Path]]:
    """A support folder (12 classes, one drawing each) and 12 x 3 query files by other drawers."""
    names = list(novel_drawings)
    support = class_files(tmp_path / "support", novel_drawings, names)
    queries = class_folders(tmp_path / "queries", novel_drawings, names, drawers=[5, 9, 14])
    return support, inference.list_queries([queries])


def test_the_onnx_model_carries_what_the_checkpoint_does(folder: Path) -> None:
    exported, checkpoint = inference.load_model(folder), inference.load_model(folder, engine="torch")
    assert isinstance(exported, OnnxModel) and isinstance(checkpoint, inference.TrainedModel)
    assert exported.identity == checkpoint.identity  # a bank of either is the other's
    assert exported.verify == checkpoint.verify == CALIBRATION
    assert exported.spec == checkpoint.spec == ImageSpec(SIZE)
    assert isinstance(inference.load_model(folder / FILENAME), OnnxModel)  # the file names the folder too


def test_the_onnx_model_embeds_and_scores_as_the_checkpoint(folder: Path, drawings: tuple[Path, list[Path]]) -> None:
    """fp32 ONNX against the evaluation's scoring (`SiameseClassifier`) on fp32 embeddings: equal to float
    rounding; against the bf16 inference torch runs: within bf16's rounding."""
    exported, checkpoint = inference.load_model(folder), inference.load_model(folder, engine="torch")
    assert isinstance(checkpoint, inference.TrainedModel)
    support_dir, query_files = drawings
    support = inference.read_support(support_dir, exported.spec)
    images = inference.read_images(query_files, exported.spec)
    with torch.no_grad():
        fp32 = checkpoint.net.float().embed(to_tensor(images))
        support_fp32 = checkpoint.net.embed(to_tensor(support.images))
    np.testing.assert_allclose(exported.embed(images), fp32.numpy(), atol=1e-5)
    classifier = SiameseClassifier(checkpoint.net)
    classifier.process_support_embeddings(support_fp32, support.labels)
    classes, scores = exported.class_scores(images, support_fp32.numpy(), support.labels)
    np.testing.assert_array_equal(classes, classifier.support_labels)
    np.testing.assert_allclose(scores, classifier.scores_embeddings(fp32).numpy(), atol=1e-5)
    bank = inference.enroll(exported, support)
    ours, theirs = inference.predict(exported, bank, images, 3), inference.predict(checkpoint, bank, images, 3)
    np.testing.assert_allclose(ours.scores, theirs.scores, atol=0.05)
    a, b = images[0], images[1]
    assert abs(inference.verify(exported, a, b).similarity - inference.verify(checkpoint, a, b).similarity) < 0.05


def test_a_bank_of_one_engine_serves_the_other(folder: Path, drawings: tuple[Path, list[Path]]) -> None:
    exported, checkpoint = inference.load_model(folder), inference.load_model(folder, engine="torch")
    support_dir, query_files = drawings
    images = inference.read_images(query_files, exported.spec)
    bank = inference.enroll(checkpoint, inference.read_support(support_dir, checkpoint.spec))
    assert inference.predict(exported, bank, images).classes.shape == (len(images), 1)


def test_a_model_onnx_from_another_checkpoint_is_refused(folder: Path) -> None:
    """The checkpoint was retrained after the export: running the old graph would answer for the old network."""
    torch.manual_seed(1)
    save_siamese(SiameseNet(SIZE, channels=8, embedding_dim=16), folder / FILENAME)
    with pytest.raises(ValueError, match=r"model\.onnx was exported from another model\.safetensors.*"
                                         r"oneshot-gda export --model"):
        inference.load_model(folder)
    assert isinstance(inference.load_model(folder, engine="torch"), inference.TrainedModel)
    export_checkpoint(folder)  # the fix the message names
    assert isinstance(inference.load_model(folder), OnnxModel)


@pytest.mark.parametrize("content", [b"not a model", b""])
def test_a_model_onnx_that_is_no_model_is_refused(content: bytes, tmp_path: Path) -> None:
    write_model(tmp_path / FILENAME)
    (tmp_path / ONNX_FILENAME).write_bytes(content)
    with pytest.raises(ValueError, match=r"model\.onnx: not an ONNX model ONNX Runtime can load.*oneshot-gda export"):
        inference.load_model(tmp_path)


def test_the_onnx_engine_without_model_onnx_names_the_export(tmp_path: Path) -> None:
    write_model(tmp_path / FILENAME)
    assert isinstance(inference.load_model(tmp_path), inference.TrainedModel)  # auto: the checkpoint
    with pytest.raises(FileNotFoundError, match=r"no model\.onnx beside the checkpoint.*oneshot-gda export"):
        inference.load_model(tmp_path, engine="onnx")


def test_the_command_predicts_from_a_model_folder_without_torch(folder: Path, drawings: tuple[Path, list[Path]],
                                                                tmp_path: Path) -> None:
    """The process that answers never imports torch (nor Lightning, nor MLflow), and answers as the API."""
    support_dir, query_files = drawings
    out = tmp_path / "out.csv"
    code = ("import sys; from pipeline import cli; rc = cli.main(sys.argv[1:]); "
            "loaded = [m for m in ('torch', 'pytorch_lightning', 'mlflow') if m in sys.modules]; "
            "assert not loaded, loaded; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "predict", "--model", str(folder), "--support",
                           str(support_dir), "--query", *map(str, query_files[:6]), "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = out.read_text().splitlines()[1:]
    model = inference.load_model(folder)
    expected = inference.predict(model, inference.enroll(model, inference.read_support(support_dir, model.spec)),
                                 inference.read_images(query_files[:6], model.spec))
    assert [r.split(",")[1] for r in rows] == list(expected.classes[:, 0])


def test_the_export_command_writes_model_onnx(tmp_path: Path) -> None:
    write_model(tmp_path / "m" / FILENAME)
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "export", "--model", str(tmp_path / "m")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "model.onnx" in done.stdout and isinstance(inference.load_model(tmp_path / "m"), OnnxModel)
