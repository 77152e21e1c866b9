"""The logged classifier as an MLflow model: a pyfunc that answers a one-shot task as `oneshot-gda predict` does,
refuses bad requests by row, and the registry's `@champion` that moves only to a model at least as good.
Every store is a real MLflow SQLite store in tmp_path; every image a real Omniglot drawing."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as mlflow_tracking_utils
from PIL import Image

from pipeline import inference, serving, tracking
from tests.drawings import class_folders, write_model


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setattr(mlflow_tracking_utils, "_tracking_uri", None)
    # set_experiment sets a module global and exports MLFLOW_EXPERIMENT_ID: both restored after the test
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    mlflow.set_experiment("serving-test")
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()


def task(root: Path, drawings: dict[str, list[bytes]], names: list[str]) -> tuple[pd.DataFrame, list[Path]]:
    """Drawer 0 of each class as the support, drawers 1 and 2 as the queries: the request frame and the query files."""
    support = class_folders(root / "support", drawings, names, [0])
    queries = class_folders(root / "queries", drawings, names, [1, 2])
    query_files = inference.list_queries([queries])
    rows = [(serving.encode_image(support / n / "00.png"), n) for n in names]
    rows += [(serving.encode_image(q), "") for q in query_files]
    return pd.DataFrame(rows, columns=["image", "label"]), query_files


def log(checkpoint: Path, name: str, example: pd.DataFrame, registered: str | None = None) -> str:
    with mlflow.start_run():
        info = serving.log_model(checkpoint, name, example.iloc[[0, 1, -1]], {"variant": name},
                                 registered_model_name=registered)
    return info.model_uri


def test_the_logged_model_answers_a_task_as_oneshot_predict_does(store: str, tmp_path: Path,
                                                                novel_drawings: dict[str, list[bytes]]) -> None:
    names = sorted(novel_drawings)[:5]
    frame, query_files = task(tmp_path, novel_drawings, names)
    checkpoint = write_model(tmp_path / "model.safetensors", seed=3)
    uri = log(checkpoint, "vae", frame)
    answer = mlflow.pyfunc.load_model(uri).predict(frame)

    model = inference.load_model(checkpoint)
    bank = inference.enroll(model, inference.read_support(tmp_path / "support", model.spec))
    expected = inference.predict(model, bank, inference.read_images(query_files, model.spec))
    assert list(answer.columns) == ["row", "prediction", "score"]
    assert answer["row"].tolist() == list(range(len(names), len(frame)))  # one row per query, in order
    assert answer["prediction"].tolist() == expected.classes[:, 0].tolist()
    np.testing.assert_allclose(answer["score"], expected.scores[:, 0], atol=1e-6)

    logged = mlflow.models.get_model_info(uri)
    assert logged.signature.inputs.input_names() == ["image", "label"]
    assert logged.signature.outputs.input_names() == ["row", "prediction", "score"]
    assert logged.metadata == {"variant": "vae"}
    assert f"torch=={__import__('torch').__version__.split('+')[0]}" in serving.requirements()
    # `oneshot-gda` reads the same weights back from the URI: banks enrolled with either work with both.
    assert inference.load_model(uri).identity == model.identity


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.drop(columns="image"), r"Model is missing inputs \['image'\]"),  # MLflow enforces the signature
    (lambda f: f.assign(label=""), r"no support: give at least one row with a `label`"),
    (lambda f: f.assign(label="x"), r"no queries: give at least one row without a `label`"),
    (lambda f: f.assign(image=f["image"].where(f.index != 4, "not base64!")), r"row 4: `image` is not base64"),
    (lambda f: f.assign(image=f["image"].where(f.index != 2, base64.b64encode(b"text").decode())),
     r"row 2: not a readable image"),
    (lambda f: f.assign(image=f["image"].where(f.index != 1, png(np.full((40, 40), 255, np.uint8)))),
     r"row 1: blank image .* no example of class"),
    (lambda f: f.assign(image=f["image"].where(f.index != 6, png(np.zeros((4, 4), np.uint8)))),
     r"row 6: 4 x 4 pixels, too small to hold a drawing"),
])
def test_a_bad_request_is_refused_naming_the_row(store: str, tmp_path: Path, novel_drawings: dict[str, list[bytes]],
                                                 change: object, message: str) -> None:
    frame, _ = task(tmp_path, novel_drawings, sorted(novel_drawings)[:3])
    model = mlflow.pyfunc.load_model(log(write_model(tmp_path / "model.safetensors"), "vae", frame))
    with pytest.raises(MlflowException, match=message) as caught:
        model.predict(change(frame))  # type: ignore[operator]
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"  # `mlflow models serve` answers 400


def png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_champion_moves_only_to_a_model_at_least_as_good(store: str, tmp_path: Path,
                                                         novel_drawings: dict[str, list[bytes]]) -> None:
    frame, _ = task(tmp_path, novel_drawings, sorted(novel_drawings)[:3])
    client = MlflowClient()
    checkpoints = [write_model(tmp_path / f"m{i}" / "model.safetensors", seed=i) for i in range(3)]
    versions = []
    for i, checkpoint in enumerate(checkpoints):
        log(checkpoint, f"variant{i}", frame, registered="oneshot")
        versions.append(str(i + 1))
    identity = {inference.load_model(c).identity: v for c, v in zip(checkpoints, versions, strict=True)}
    seen = []

    def score_champion(uri: str) -> float | None:
        seen.append(identity[inference.load_model(uri).identity])  # the champion itself is loaded and scored
        return {"1": 0.80, "3": 0.85}[seen[-1]]

    assert "no champion before: promoted" in serving.promote(client, "oneshot", "1", 0.80, "acc_20way", score_champion)
    assert "0.7900 against champion v1's 0.8000 on the same episodes: the alias stays" in serving.promote(
        client, "oneshot", "2", 0.79, "acc_20way", score_champion)
    assert str(client.get_model_version_by_alias("oneshot", "champion").version) == "1"
    assert serving.promote(client, "oneshot", "3", 0.80, "acc_20way", score_champion).endswith("promoted")  # a tie
    assert str(client.get_model_version_by_alias("oneshot", "champion").version) == "3" and seen == ["1", "1"]
    assert serving.promote(client, "oneshot", "2", 0.90, "acc_20way", lambda uri: None).endswith("the alias stays")
    assert client.get_model_version("oneshot", "2").tags["champion_check"].endswith("the alias stays")
    # What `oneshot-gda --model models:/oneshot@champion` loads: version 3's weights.
    assert identity[inference.load_model("models:/oneshot@champion").identity] == "3"
    # Version 3's files deleted (a workspace's mlruns/ removed under a store that outlives it): nothing defends
    # the alias, and a worse model takes it rather than the stage failing.
    # Any other failure to score the champion is the stage's to report: the alias stays where it was.
    def broken(uri: str) -> float | None:
        raise ValueError("a scoring bug")

    with pytest.raises(ValueError, match="a scoring bug"):
        serving.promote(client, "oneshot", "2", 0.99, "acc_20way", broken)
    assert str(client.get_model_version_by_alias("oneshot", "champion").version) == "3"
    gone = client.get_model_version_download_uri("oneshot", "3")
    shutil.rmtree(gone.removeprefix("file://"))
    with pytest.raises(tracking.ModelFilesMissing, match=r"models:/oneshot@champion: .* its files are gone"):
        inference.load_model("models:/oneshot@champion")
    assert serving.promote(client, "oneshot", "2", 0.10, "acc_20way", score_champion) \
        == "acc_20way 0.1000; champion v3 does not load: promoted"
    assert str(client.get_model_version_by_alias("oneshot", "champion").version) == "2"
