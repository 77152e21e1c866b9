"""The inference API on real Omniglot drawings written as files: both support layouts, queries, images of any
size and format, the bank, prediction as the few-shot classifier scores, verification, MLflow model URIs."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking._tracking_service import utils as mlflow_tracking_utils
from PIL import Image
from torch import nn

from pipeline import inference
from pipeline.checkpoints import FILENAME
from pipeline.classifiers.fewshot import SiameseClassifier
from pipeline.classifiers.network import SiameseNet, save_siamese
from pipeline.data.images import ImageError, ImageSpec, load_image_file, preprocess_image, to_tensor
from pipeline.generators import save_generator
from pipeline.generators.vae import ExemplarVAE
from tests.drawings import CALIBRATION, SIZE, class_files, class_folders, write_drawing, write_model

SPEC = ImageSpec(SIZE)  # what tests.drawings' models were trained on: grayscale 28 x 28 drawings, inverted


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_thread: None) -> None:
    """Tiny networks: see conftest.single_thread."""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> inference.TrainedModel:
    return inference.load_model(write_model(tmp_path_factory.mktemp("model") / FILENAME))


def test_a_model_without_an_image_spec_reads_grayscale_inverted_drawings(model: inference.TrainedModel) -> None:
    """write_model records no image spec (as models trained before it): the network's size, 1 channel, inverted."""
    assert model.spec == SPEC


# ---------------------------------------------------------------------------- support layouts


def test_support_of_class_subfolders(tmp_path: Path, novel_drawings: dict[str, list[bytes]],
                                     model: inference.TrainedModel) -> None:
    names = sorted(novel_drawings)[:3]
    root = class_folders(tmp_path / "support", novel_drawings, names, [0, 5])
    support = inference.read_support(root, SPEC)
    assert support.class_names == tuple(names)
    np.testing.assert_array_equal(support.labels, [0, 0, 1, 1, 2, 2])
    assert support.images.shape == (6, 1, SIZE, SIZE) and support.images.dtype == np.uint8
    assert support.paths[3] == root / names[1] / "05.png"
    np.testing.assert_array_equal(support.images[3], load_image_file(root / names[1] / "05.png", model.spec))


def test_support_of_files_named_by_class(tmp_path: Path, novel_drawings: dict[str, list[bytes]]) -> None:
    names = sorted(novel_drawings)[:4]
    root = class_files(tmp_path / "support", novel_drawings, names)
    (root / ".DS_Store").write_bytes(b"hidden files are not examples")
    support = inference.read_support(root, SPEC)
    assert support.class_names == tuple(names)
    np.testing.assert_array_equal(support.labels, [0, 1, 2, 3])


def make_bad_support(root: Path, case: str, png: bytes) -> tuple[Path, str]:
    """A support folder that is wrong in one way, and the text the error must hold."""
    if case == "missing":
        return root / "nowhere", "nowhere: no such support folder"
    root.mkdir()
    if case == "empty":
        return root, "empty support folder"
    if case == "a file":
        write_drawing(root / "one.png", png)
        return root / "one.png", "one.png: the support must be a folder"
    if case == "empty class folder":
        write_drawing(root / "alpha" / "1.png", png)
        (root / "beta").mkdir()
        return root, "beta: class folder 'beta' holds no images"
    if case == "mixed layouts":
        write_drawing(root / "alpha" / "1.png", png)
        write_drawing(root / "beta.png", png)
        return root, "holds both class subfolders (alpha) and image files (beta.png)"
    if case == "two files of one class":
        write_drawing(root / "alpha.png", png)
        write_drawing(root / "alpha.jpg", png, "jpeg")
        return root, "both name class 'alpha'"
    if case == "nested folder":
        (root / "alpha" / "deeper").mkdir(parents=True)
        return root, "deeper: a class folder holds image files, not folders"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["missing", "empty", "a file", "empty class folder", "mixed layouts",
                                  "two files of one class", "nested folder"])
def test_bad_support_folders_are_named(case: str, tmp_path: Path, novel_drawings: dict[str, list[bytes]]) -> None:
    folder, message = make_bad_support(tmp_path / "support", case, next(iter(novel_drawings.values()))[0])
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        inference.read_support(folder, SPEC)
    assert message in str(info.value)


def test_a_non_image_in_the_support_is_named(tmp_path: Path, novel_drawings: dict[str, list[bytes]]) -> None:
    root = class_files(tmp_path / "support", novel_drawings, sorted(novel_drawings)[:2])
    (root / "notes.txt").write_text("not a drawing")
    with pytest.raises(ImageError, match=r"notes\.txt: not a readable image"):
        inference.read_support(root, SPEC)


# ---------------------------------------------------------------------------- images and queries


def test_any_size_and_format_goes_through_the_training_preprocessing(
        tmp_path: Path, novel_drawings: dict[str, list[bytes]]) -> None:
    png = next(iter(novel_drawings.values()))[3]
    with Image.open(io.BytesIO(png)) as original:
        expected = preprocess_image(original, SPEC)  # what `prepare` makes of this drawing
    exact = [write_drawing(tmp_path / f"d-{form}.png", png, form) for form in ("png", "rgb", "rgba-transparent")]
    for image in inference.read_images(exact, SPEC):
        np.testing.assert_array_equal(image, expected)
    # Other pixels for the same drawing: 3x the size, or lossy JPEG. The box filter weighs whole source
    # pixels, so the 28 x 28 result moves by a grey level or two on average, not more.
    near = [write_drawing(tmp_path / "d-large.png", png, "rgb-large"), write_drawing(tmp_path / "d.jpg", png, "jpeg")]
    for image in inference.read_images(near, SPEC):
        assert np.abs(image.astype(int) - expected).mean() < 4


def test_queries_keep_the_order_given(tmp_path: Path, novel_drawings: dict[str, list[bytes]]) -> None:
    png = next(iter(novel_drawings.values()))[0]
    for name in ("b.png", "a.png", "sub/c.png", ".hidden.png", ".git/x.png"):
        write_drawing(tmp_path / "folder" / name, png)
    single = write_drawing(tmp_path / "z.png", png)
    listed = inference.list_queries([single, tmp_path / "folder", single])
    assert listed == [single, tmp_path / "folder/a.png", tmp_path / "folder/b.png", tmp_path / "folder/sub/c.png",
                      single]


def test_missing_and_empty_queries_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"gone\.png: no such query file or folder"):
        inference.list_queries([tmp_path / "gone.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: query folder holds no image files"):
        inference.list_queries([tmp_path / "empty"])


def test_a_non_image_query_is_named(tmp_path: Path) -> None:
    (tmp_path / "query.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(ImageError, match=r"query\.png: not a readable image"):
        inference.read_images([tmp_path / "query.png"], SPEC)


# ---------------------------------------------------------------------------- predict


def test_predict_scores_as_the_few_shot_classifier(tmp_path: Path, novel_drawings: dict[str, list[bytes]],
                                                   model: inference.TrainedModel) -> None:
    names = sorted(novel_drawings)
    support = inference.read_support(class_folders(tmp_path / "s", novel_drawings, names, [0, 1]),
                                     model.spec)
    queries = inference.read_images([write_drawing(tmp_path / "q" / f"{i}.png", novel_drawings[n][7])
                                     for i, n in enumerate(names)], model.spec)
    result = inference.predict(model, inference.enroll(model, support), queries, top_k=3)

    classifier = SiameseClassifier(model.net)
    classifier.process_support(to_tensor(support.images), support.labels)
    scores = classifier.scores(to_tensor(queries))
    best = scores.argsort(dim=-1, descending=True)[:, :3].numpy()
    np.testing.assert_array_equal(result.classes, np.asarray(names)[best])
    np.testing.assert_array_equal(result.scores, np.take_along_axis(scores.numpy(), best, axis=1))
    assert result.classes.shape == result.scores.shape == (len(names), 3)


def test_each_drawing_is_recognised_from_its_own_copy_in_any_format(
        tmp_path: Path, novel_drawings: dict[str, list[bytes]], model: inference.TrainedModel) -> None:
    names = sorted(novel_drawings)
    bank = inference.enroll(model, inference.read_support(class_files(tmp_path / "s", novel_drawings, names),
                                                          model.spec))
    forms = ["png", "rgb-large", "rgba-transparent", "jpeg"]
    paths = [write_drawing(tmp_path / "q" / f"{i:02d}.{forms[i % 4]}", novel_drawings[n][0], forms[i % 4])
             for i, n in enumerate(names)]
    result = inference.predict(model, bank, inference.read_images(paths, model.spec))
    assert list(result.classes[:, 0]) == names


@pytest.mark.parametrize("top_k", [0, 4])
def test_top_k_must_fit_the_classes(top_k: int, tmp_path: Path, novel_drawings: dict[str, list[bytes]],
                                    model: inference.TrainedModel) -> None:
    support = inference.read_support(class_files(tmp_path, novel_drawings, sorted(novel_drawings)[:3]), model.spec)
    with pytest.raises(ValueError, match=f"top_k={top_k}; it must be between 1 and the 3 enrolled classes"):
        inference.predict(model, inference.enroll(model, support), support.images, top_k=top_k)


# ---------------------------------------------------------------------------- the bank


def test_bank_round_trip(tmp_path: Path, novel_drawings: dict[str, list[bytes]],
                         model: inference.TrainedModel) -> None:
    support = inference.read_support(class_folders(tmp_path / "s", novel_drawings, sorted(novel_drawings)[:3],
                                                   [0, 2]), model.spec)
    bank = inference.enroll(model, support)
    bank.save(tmp_path / "bank.npz")
    loaded = inference.Bank.load(tmp_path / "bank.npz")
    assert loaded.class_names == bank.class_names
    assert (loaded.model_identity, loaded.model_source) == (model.identity, model.source)
    np.testing.assert_array_equal(loaded.labels, bank.labels)
    np.testing.assert_array_equal(loaded.embeddings, bank.embeddings)
    assert loaded.embeddings.dtype == np.float32 and loaded.embeddings.shape == (6, 16)
    assert [p.name for p in tmp_path.iterdir()] != [], "written"
    assert not list(tmp_path.glob(".bank*")), "no temporary file left behind"


def test_enrolling_more_adds_classes_and_examples(tmp_path: Path, novel_drawings: dict[str, list[bytes]],
                                                  model: inference.TrainedModel) -> None:
    a, b, c = sorted(novel_drawings)[:3]
    first = inference.enroll(model, inference.read_support(class_folders(tmp_path / "1", novel_drawings, [a, b], [0]),
                                                           model.spec))
    # More: a second drawing of b, and a new class c.
    more = inference.read_support(class_folders(tmp_path / "2", novel_drawings, [b, c], [1]), model.spec)
    bank = inference.enroll(model, more, first)
    assert bank.class_names == (a, b, c)
    np.testing.assert_array_equal(bank.labels, [0, 1, 1, 2])
    # The same as enrolling everything at once: b's prototype is the mean of its two drawings.
    together = tmp_path / "all"
    class_folders(together, novel_drawings, [a, b], [0])
    class_folders(together, novel_drawings, [b, c], [1])
    queries = inference.read_images([write_drawing(tmp_path / "q" / f"{n}.png", novel_drawings[n][9])
                                     for n in (a, b, c)], model.spec)
    once = inference.predict(model, inference.enroll(model, inference.read_support(together, model.spec)), queries,
                             top_k=3)
    merged = inference.predict(model, bank, queries, top_k=3)
    np.testing.assert_array_equal(merged.classes, once.classes)
    np.testing.assert_allclose(merged.scores, once.scores, rtol=0, atol=1e-6)


def test_a_bank_of_another_model_is_refused(tmp_path: Path, novel_drawings: dict[str, list[bytes]],
                                            model: inference.TrainedModel) -> None:
    other = inference.load_model(write_model(tmp_path / "other.safetensors", seed=1))
    support = inference.read_support(class_files(tmp_path / "s", novel_drawings, sorted(novel_drawings)[:2]),
                                     model.spec)
    bank = inference.enroll(other, support)
    with pytest.raises(ValueError,
                       match=r"enrolled with another model \(.*other\.safetensors, weights [0-9a-f]{12}\)"):
        inference.predict(model, bank, support.images)
    with pytest.raises(ValueError, match="enrolled with another model"):
        inference.enroll(model, support, bank)


def test_the_same_weights_have_the_same_identity(tmp_path: Path, model: inference.TrainedModel) -> None:
    again = inference.load_model(write_model(tmp_path / "copy.safetensors", calibration=None))
    assert again.identity == model.identity and again.source != model.source
    assert inference.load_model(write_model(tmp_path / "other.safetensors", seed=1)).identity != model.identity


@pytest.mark.parametrize("content", [b"random bytes", b"PK\x03\x04 a broken zip", "npz without kind"])
def test_a_file_that_is_no_bank_is_named(content: bytes | str, tmp_path: Path) -> None:
    path = tmp_path / "bank.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.savez(path, embeddings=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"bank\.npz: not a bank written by `enroll`"):
        inference.Bank.load(path)
    with pytest.raises(FileNotFoundError, match=r"absent\.npz: no such bank file"):
        inference.Bank.load(tmp_path / "absent.npz")


# ---------------------------------------------------------------------------- models and verify


@pytest.mark.parametrize(("kind", "message"), [
    ("generator", "a 'generator' checkpoint, not a siamese checkpoint"),
    ("random bytes", "not a siamese checkpoint"),
    ("a torch pickle", "not a siamese checkpoint"),
    ("an image", "not a siamese checkpoint"),
    ("missing", "no such model file"),
])
def test_a_file_that_is_no_siamese_model_is_named(kind: str, message: str, tmp_path: Path,
                                                   novel_drawings: dict[str, list[bytes]]) -> None:
    path = tmp_path / FILENAME
    if kind == "generator":
        save_generator("vae", ExemplarVAE(16, latent_dim=2, widths=(8, 16)), path)
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(1000))
    elif kind == "a torch pickle":
        torch.save({"kind": "siamese", "state_dict": SiameseNet(SIZE, 8, 16).state_dict()}, path)
    elif kind == "an image":
        write_drawing(path, next(iter(novel_drawings.values()))[0])
    for given in (path, tmp_path):  # the file, or the model folder holding it
        with pytest.raises(ValueError, match=rf"model\.safetensors: {message}"):
            inference.load_model(given)


def test_a_model_folder_loads_as_its_file(tmp_path: Path, model: inference.TrainedModel) -> None:
    write_model(tmp_path / FILENAME)
    from_folder = inference.load_model(tmp_path)
    assert from_folder.identity == model.identity and from_folder.source == str(tmp_path)
    assert from_folder.verify == CALIBRATION and from_folder.spec == SPEC


def test_verify_decides_with_the_calibrated_threshold(tmp_path: Path, novel_drawings: dict[str, list[bytes]],
                                                      model: inference.TrainedModel) -> None:
    drawings = novel_drawings[sorted(novel_drawings)[0]]
    a, b = inference.read_images([write_drawing(tmp_path / f"{i}.png", drawings[i]) for i in (0, 1)], model.spec)
    assert model.verify == CALIBRATION
    verdict = inference.verify(model, a, b)
    with torch.no_grad():
        expected = float(model.net(to_tensor(a[None]), to_tensor(b[None]))[0])
    assert verdict.similarity == pytest.approx(expected, abs=0.02)  # bf16 autocast vs fp32
    assert (verdict.threshold, verdict.target) == (0.5, "eer")
    assert verdict.same == (verdict.similarity >= 0.5)
    for threshold, same in ((verdict.similarity, True), (float(np.nextafter(verdict.similarity, 2)), False)):
        given = inference.verify(model, a, b, threshold=threshold)
        assert (given.same, given.threshold, given.target) == (same, threshold, "given")


def test_verify_without_a_calibrated_threshold_says_so(tmp_path: Path, novel_drawings: dict[str, list[bytes]]) -> None:
    old = inference.load_model(write_model(tmp_path / "old.safetensors", calibration=None))
    image = inference.read_images([write_drawing(tmp_path / "a.png", next(iter(novel_drawings.values()))[0])],
                                  old.spec)[0]
    with pytest.raises(ValueError, match=r"old\.safetensors carries no calibrated verification threshold"):
        inference.verify(old, image, image)
    assert inference.verify(old, image, image, threshold=0.9).same


# ---------------------------------------------------------------------------- a model of other data


RGB_SPEC = ImageSpec(32, 3, invert=False)


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory: pytest.TempPathFactory) -> inference.TrainedModel:
    """A tiny RGB 32 x 32 network whose training images were not inverted, as train_classifier saves one."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("rgb")
    save_siamese(SiameseNet(32, channels=8, embedding_dim=16, in_channels=3), folder / FILENAME,
                 extra={"verify": dataclasses.asdict(CALIBRATION), "image_spec": dataclasses.asdict(RGB_SPEC)})
    return inference.load_model(folder)


def test_an_rgb_model_reads_images_by_its_spec(tmp_path: Path, novel_drawings: dict[str, list[bytes]],
                                               rgb_model: inference.TrainedModel) -> None:
    assert rgb_model.spec == RGB_SPEC
    names = sorted(novel_drawings)[:4]
    support = inference.read_support(class_files(tmp_path / "s", novel_drawings, names), rgb_model.spec)
    assert support.images.shape == (4, 3, 32, 32)
    assert (support.images[:, :, 0, 0] == 255).all(), "the white page stays white: not inverted"
    png = novel_drawings[names[0]][0]
    with Image.open(io.BytesIO(png)) as original:
        np.testing.assert_array_equal(support.images[0], preprocess_image(original, RGB_SPEC))
    paths = [write_drawing(tmp_path / "q" / f"{i}.png", novel_drawings[n][0], "rgb") for i, n in enumerate(names)]
    queries = inference.read_images(paths, rgb_model.spec)
    result = inference.predict(rgb_model, inference.enroll(rgb_model, support), queries, top_k=2)
    assert list(result.classes[:, 0]) == names, "each drawing is nearest its own copy"
    assert inference.verify(rgb_model, queries[0], queries[0]).same


# ---------------------------------------------------------------------------- MLflow model URIs


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real SQLite MLflow store, named by MLFLOW_TRACKING_URI as a user would; one per module (making one takes
    seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        monkeypatch.setattr(mlflow_tracking_utils, "_tracking_uri", None)  # MLflow reads the variable
        yield uri
        while mlflow.active_run() is not None:
            mlflow.end_run()


def log_model(model: nn.Module, metadata: dict | None, registered_name: str | None = None) -> str:
    """Log like stages/evaluate.py does; returns the run id."""
    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", metadata=metadata,
                                 pip_requirements=["torch"], registered_model_name=registered_name)
    return run.info.run_id


def test_models_load_from_mlflow_uris(mlflow_store: str, model: inference.TrainedModel) -> None:
    spec = ImageSpec(SIZE, 1, invert=False)  # not the fallback: read from the metadata, as evaluate logs it
    run_id = log_model(model.net, {"verify": dataclasses.asdict(CALIBRATION), "image_spec": dataclasses.asdict(spec)},
                       "omniglot-vae")
    for uri in (f"runs:/{run_id}/model", "models:/omniglot-vae/1"):
        logged = inference.load_model(uri)
        assert isinstance(logged.net, SiameseNet) and logged.source == uri
        assert logged.identity == model.identity, "same weights as the file: banks work with either"
        assert logged.verify == CALIBRATION and logged.spec == spec


def test_an_mlflow_uri_that_is_no_siamese_model_is_named(mlflow_store: str) -> None:
    run_id = log_model(nn.Linear(2, 2), None)
    with pytest.raises(ValueError, match=rf"runs:/{run_id}/model: the logged model is a Linear, not a Siamese"):
        inference.load_model(f"runs:/{run_id}/model")
    with pytest.raises(ValueError, match=r"runs:/0123456789abcdef/model: not a model of this pipeline in the MLflow"):
        inference.load_model("runs:/0123456789abcdef/model")
