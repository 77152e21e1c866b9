"""A trained classifier as an MLflow model that stands alone: a pyfunc a user loads, serves and predicts with.

    model = mlflow.pyfunc.load_model("models:/omniglot-oneshot@champion")
    frame = pd.DataFrame({"image": [encode_image(p) for p in paths], "label": ["cat", "dog", "", ""]})
    model.predict(frame)  # one row per query (no label): row, prediction, score

One call is a one-shot task: the rows with a `label` are the support (one or more example images per
class), the rows without are the queries, each scored against the classes of that support exactly as
`oneshot-gda predict` scores it (`inference.enroll` and `inference.predict`). Images travel as the
base64 of an image file (PNG, JPEG, ...), which `mlflow models serve` takes as JSON:

    curl -d '{"dataframe_split": {"columns": ["image", "label"], "data": [["iVBOR...", "cat"], ...]}}' \\
         -H 'Content-Type: application/json' http://127.0.0.1:5001/invocations

The model carries its code (`code_paths`: this package), the checkpoint (weights, preprocessing and
the verification threshold) and pinned requirements, so it loads in an environment that has the
packages and no checkout of the project.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # at run time: MLflow reads `predict`'s type hints
from mlflow.pyfunc import PythonModel

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

    from pipeline.inference import Model

# MLflow checks each logged model on its input example and says so at INFO, once per variant: noise in a stage.
logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)

ARTIFACT = "classifier"  # the checkpoint's key in the model's artifacts
# What inference needs at run time, pinned to the versions that logged the model.
REQUIREMENTS = ("torch", "numpy", "pandas", "pillow", "safetensors", "mlflow", "pyyaml")


def encode_image(path: str | Path) -> str:
    """An image file as the base64 text the model's `image` column takes."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def encode_array(image: np.ndarray, inverted: bool) -> str:
    """A preprocessed uint8 [C, S, S] array as PNG base64; `inverted` (the spec's `invert`) turns it back into
    dark strokes on a light page, as the image files were."""
    from PIL import Image

    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(255 - pixels if inverted else pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def signature() -> ModelSignature:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "image"), ColSpec("string", "label", required=False)]),
        outputs=Schema([ColSpec("long", "row"), ColSpec("string", "prediction"), ColSpec("double", "score")]))


def requirements() -> list[str]:
    """`REQUIREMENTS` pinned to the installed versions (torch without its local `+cpu` tag)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


class InvalidInput(ValueError):
    """A request the model cannot answer; `mlflow models serve` answers it with 400 and this message."""


def _bad_input(message: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def decode_images(values: list[Any], rows: list[int], model: Model) -> np.ndarray:
    """base64 image files -> uint8 [N, C, S, S] by the model's preprocessing; a bad one names its row."""
    from pipeline.data.images import load_image_file_sized
    from pipeline.inference import check_size

    spec = model.spec
    out = np.empty((len(values), spec.channels, spec.size, spec.size), dtype=np.uint8)
    for i, (value, row) in enumerate(zip(values, rows, strict=True)):
        name = f"row {row}"
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"{name}: `image` must be the base64 text of an image file, got {value!r}")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"{name}: `image` is not base64 ({exc})") from exc
        out[i], size = load_image_file_sized(io.BytesIO(data), spec, name=name)
        check_size(name, size, spec)
    return out


def one_shot_predict(model: Model, frame: pd.DataFrame) -> pd.DataFrame:
    """Rows with a label are the support, rows without are the queries: each query's best class and score."""
    from pipeline import inference

    if "image" not in frame.columns:
        raise InvalidInput(f"the input has columns {list(frame.columns)}; it needs `image` (base64 image file) "
                           "and `label` (a class name for a support image, empty for a query)")
    labels = frame["label"] if "label" in frame.columns else pd.Series([None] * len(frame))
    is_support = [isinstance(v, str) and v.strip() != "" for v in labels]
    support_rows = [i for i, s in enumerate(is_support) if s]
    query_rows = [i for i, s in enumerate(is_support) if not s]
    if not support_rows:
        raise InvalidInput("no support: give at least one row with a `label` (an example image of its class)")
    if not query_rows:
        raise InvalidInput("no queries: give at least one row without a `label` (an image to classify)")
    images = decode_images(frame["image"].tolist(), list(range(len(frame))), model)
    names = [str(labels.iloc[i]).strip() for i in support_rows]
    classes = list(dict.fromkeys(names))
    support_images = images[support_rows]
    blank = inference.blank_images(support_images)
    if blank.any():
        row = support_rows[int(np.argmax(blank))]
        raise InvalidInput(f"row {row}: blank image (every pixel the same, no strokes), no example of class "
                           f"{names[int(np.argmax(blank))]!r}; replace it with a drawing")
    support = inference.Support(class_names=tuple(classes), labels=np.array([classes.index(n) for n in names]),
                                images=support_images, paths=())
    bank = inference.enroll(model, support)
    result = inference.predict(model, bank, images[query_rows], top_k=1)
    return pd.DataFrame({"row": np.array(query_rows, dtype=np.int64), "prediction": result.classes[:, 0],
                         "score": result.scores[:, 0].astype(np.float64)})


class OneShotModel(PythonModel):
    """The pyfunc: `load_context` reads the checkpoint, `predict` runs `one_shot_predict`."""

    def load_context(self, context: Any) -> None:
        from pipeline import inference

        self.model = inference.load_model(context.artifacts[ARTIFACT], engine="torch")

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        try:
            return one_shot_predict(self.model, model_input)
        except ValueError as exc:  # a bad image or request: the caller's to fix, not a server fault
            raise _bad_input(str(exc)) from exc


def log_model(checkpoint: str | Path, name: str, example: pd.DataFrame, metadata_: dict[str, Any],
              registered_model_name: str | None = None) -> Any:
    """Log the classifier at `checkpoint` (its model.safetensors) as the pyfunc `name`; returns MLflow's ModelInfo."""
    import mlflow.pyfunc

    from pipeline.checkpoints import FILENAME

    path = Path(checkpoint)
    path = path / FILENAME if path.is_dir() else path
    with tempfile.TemporaryDirectory(prefix="oneshot-code-") as tmp:
        code = Path(tmp) / "pipeline"  # the package's sources, without caches or anything else beside them
        shutil.copytree(Path(__file__).resolve().parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(code / "mlflow_model.py"), artifacts={ARTIFACT: str(path)},
            code_paths=[str(code)], signature=signature(), input_example=example, pip_requirements=requirements(),
            metadata=metadata_, registered_model_name=registered_model_name)


CHAMPION = "champion"


def promote(client: Any, name: str, version: str, score: float, key: str,
            score_champion: Callable[[str], float | None]) -> str:
    """Point `name@champion` at `version` (scoring `score` on `key`) when it is at least as good as the champion.

    `score_champion(uri)` scores the present champion on the same episodes, or gives None when it cannot (it
    reads images another way than this data): then the alias stays. A champion whose files are gone (its
    artifact folder was deleted: `tracking.ModelFilesMissing`) defends nothing, and `version` takes the alias;
    any other failure to score it is raised, and the alias stays where it was. Returns the decision, in
    words, which is also the version's `champion_check` tag.
    """
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import ModelFilesMissing

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None
    if current is None:
        promoted, decision = True, f"{key} {score:.4f}; no champion before: promoted"
    elif str(current.version) == str(version):
        promoted, decision = True, f"{key} {score:.4f}; already the champion"
    else:
        try:
            theirs = score_champion(f"models:/{name}@{CHAMPION}")
        except ModelFilesMissing as exc:
            print(f"MLflow: champion v{current.version} of {name} does not load: {exc}", flush=True)
            promoted, decision = True, f"{key} {score:.4f}; champion v{current.version} does not load: promoted"
        else:
            if theirs is None:
                promoted = False
                decision = (f"{key} {score:.4f}; champion v{current.version} reads images another way and cannot "
                            "be scored on these episodes: the alias stays")
            else:
                promoted = score >= theirs
                decision = (f"{key} {score:.4f} against champion v{current.version}'s {theirs:.4f} on the same "
                            f"episodes: {'promoted' if promoted else 'the alias stays'}")
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "champion_check", decision)
    return decision
