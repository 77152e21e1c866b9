"""Use a trained Siamese network after training: enroll classes from a few examples, predict, verify.

    model = load_model("models/classifiers/vae")     # or "models:/omniglot-oneshot@champion", "runs:/<run id>/vae"
    bank = enroll(model, read_support("support/", model.spec))
    result = predict(model, bank, read_images(list_queries(["queries/"]), model.spec), top_k=3)
    verdict = verify(model, *read_images(["a.png", "b.png"], model.spec))

Every image goes through `data.images.load_image_file` with the model's `ImageSpec` (size, channels,
inversion): the preprocessing its training images had.
Prediction scores queries exactly as `SiameseClassifier` does (the evaluation's scoring): a
class's score is the similarity to the mean of its examples' embeddings.

Images that carry no drawing are caught here: one under `MIN_IMAGE_SIDE` pixels a side is refused,
and a blank one (every pixel the same after preprocessing) is refused as a support example;
`blank_images` lets a caller warn about blank queries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipeline import tracking
from pipeline.classifiers.verification import Calibration
from pipeline.data.images import ImageSpec, load_image_file_sized
from pipeline.export import OnnxModel, load_onnx, onnx_beside
from pipeline.io import atomic_path

if TYPE_CHECKING:
    from pipeline.classifiers.network import SiameseNet

BANK_KIND = "oneshot-gda support bank"
SUPPORT_LAYOUTS = "a folder of class subfolders holding example images, or a folder of image files named by class"
# Below 8 pixels a side an image cannot hold strokes a network could tell apart (scikit-learn's 8 x 8
# handwritten digits are about the smallest still told apart): a 1 x 1 or 3 x 3 file scaled up to the
# network's size is a flat patch, and its prediction would mean nothing. A smaller network input is its own limit.
MIN_IMAGE_SIDE = 8


# ---------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    net: SiameseNet
    source: str  # the path or MLflow URI it was loaded from
    identity: str  # hash of config and weights: the same for a model.pt and its copy logged to MLflow
    verify: Calibration | None  # the threshold calibrated at training; None for models trained before it
    spec: ImageSpec  # how its training images were preprocessed: every input image goes the same way

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, C, S, S] -> float32 [N, D], as evaluation embeds (`embed_all`: bf16 where the hardware has it)."""
        from pipeline.classifiers.fewshot import embed_all
        from pipeline.data.images import to_tensor

        return embed_all(self.net, to_tensor(images)).cpu().numpy()

    def class_scores(self, images: np.ndarray, embeddings: np.ndarray,
                     labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Queries [Q, C, S, S] uint8 against support embeddings [M, D] of `labels` [M]: (classes [K] sorted,
        scores [Q, K]), scored by `SiameseClassifier` as evaluation scores."""
        import torch

        from pipeline.classifiers.fewshot import SiameseClassifier
        from pipeline.data.images import to_tensor

        classifier = SiameseClassifier(self.net)
        classifier.process_support_embeddings(torch.from_numpy(embeddings), labels)
        assert classifier.support_labels is not None  # set by process_support_embeddings
        return classifier.support_labels, classifier.scores(to_tensor(images)).cpu().numpy()

    def pair_similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """Likeness of two images [C, S, S] uint8."""
        import torch

        embeddings = torch.from_numpy(self.embed(np.stack([a, b])))
        with torch.no_grad():
            return float(self.net.pair_similarity(embeddings[:1], embeddings[1:])[0])


Model = TrainedModel | OnnxModel


def model_identity(net: SiameseNet) -> str:
    """`network.model_identity`: which network made an embedding (a bank records it)."""
    from pipeline.classifiers import network

    return network.model_identity(net)

ENGINES = ("auto", "torch", "onnx")


def load_model(spec: str | Path, engine: Literal["auto", "torch", "onnx"] = "auto") -> Model:
    """A trained Siamese network from a `train_classifier` model (its folder or model.safetensors) or an MLflow URI.

    engine: `torch` loads the checkpoint into a `TrainedModel`; `onnx` runs the `model.onnx` exported
    beside it with ONNX Runtime (`export.OnnxModel`: no torch import, fp32); `auto` (default) takes
    the ONNX model where there is one, else torch. URIs (`models:/<name>@<alias>`,
    `models:/<name>/<version>`, `runs:/<run id>/<variant>`) are read from `tracking.tracking_uri()`, always with torch.
    Anything that is not a Siamese network of this pipeline is a ValueError naming `spec`.
    """
    spec = str(spec)
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}; choose one of {', '.join(ENGINES)}")
    if tracking.is_model_uri(spec):
        if engine == "onnx":
            raise ValueError(f"{spec}: the ONNX engine reads a model folder, not an MLflow URI; use engine torch")
        net, metadata = _load_logged_model(spec)
        from pipeline.classifiers.network import SiameseNet

        if not isinstance(net, SiameseNet):
            raise ValueError(f"{spec}: the logged model is a {type(net).__name__}, not a Siamese network of this "
                             "pipeline (log it from `stages/evaluate.py`)")
        verify, image_spec = metadata.get("verify"), metadata.get("image_spec")
    else:
        path = Path(spec)
        exported = onnx_beside(path) if path.exists() and engine != "torch" else None
        if exported is not None:
            from pipeline.checkpoints import FILENAME

            checkpoint = path if path.is_file() else path / FILENAME
            return load_onnx(exported, checkpoint if checkpoint.is_file() else None, source=spec)
        if engine == "onnx":
            raise FileNotFoundError(f"{spec}: no model.onnx beside the checkpoint; write it with "
                                    f"`oneshot-gda export --model {spec}`, or use engine torch")
        from pipeline.classifiers.network import load_siamese

        net, extra = load_siamese(spec)
        verify, image_spec = extra.get("verify"), extra.get("image_spec")
    from pipeline.classifiers.network import image_spec_of, model_identity

    net.eval()
    image_spec = image_spec_of(net, image_spec)
    return TrainedModel(net=net, source=spec, identity=model_identity(net),
                        verify=Calibration(**verify) if verify else None, spec=ImageSpec(**image_spec))


def _load_logged_model(uri: str) -> tuple[Any, dict[str, Any]]:
    """`tracking.load_logged_model`, with a server that does not answer named as such.

    MLflow turns a refused or timed-out request into an MlflowException (and `tracking` into a
    ValueError saying the URI is no model): the connection error is found in the exception chain.
    """
    from mlflow.exceptions import MlflowException

    try:
        return tracking.load_logged_model(uri, _read_checkpoint)
    except (tracking.TrackingError, MlflowException, OSError, ValueError) as exc:
        failure = _connection_failure(exc)
        if failure is None:
            if isinstance(exc, MlflowException):  # not wrapped by `tracking`: still an error naming the URI
                raise ValueError(f"{uri}: {exc}") from exc
            raise
        store, variable = tracking.tracking_uri(), "MLFLOW_TRACKING_URI"
        registry = os.environ.get("MLFLOW_REGISTRY_URI")
        url = getattr(getattr(failure, "request", None), "url", None) or ""
        if registry and registry != store and url.startswith(registry.rstrip("/")):
            where, store, variable = "the model registry", registry, "MLFLOW_REGISTRY_URI"
        else:
            where = "the tracking server"
        raise ConnectionError(f"{uri}: cannot reach {where} at {store} ({_innermost(exc)}); "
                              f"start it or set {variable}") from exc


def _read_checkpoint(path: Path) -> tuple[Any, dict[str, Any]]:
    from pipeline.classifiers.network import load_siamese

    return load_siamese(path)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _connection_failure(exc: BaseException) -> BaseException | None:
    """The refused, unresolved or timed-out connection behind `exc`, or None if it is another error."""
    import requests

    for link in _chain(exc):
        if isinstance(link, (tracking.TrackingError, requests.ConnectionError, requests.Timeout)):
            return link
    return None


def _innermost(exc: BaseException) -> str:
    """The root cause of `exc` in a few words (`[Errno 111] Connection refused`, `timed out`)."""
    *_, root = _chain(exc)
    return str(root) or type(root).__name__


# ---------------------------------------------------------------------------- images


def _visible(folder: Path) -> list[Path]:
    """The entries of `folder`, sorted by name, without hidden ones (.DS_Store, .git, ...)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def read_images(paths: Sequence[str | Path], spec: ImageSpec) -> np.ndarray:
    """Image files -> uint8 [N, C, S, S] through the training preprocessing `spec`.

    A file too small to hold a drawing is a ValueError naming it (`check_size`). Each file is opened once.
    """
    out = np.empty((len(paths), spec.channels, spec.size, spec.size), dtype=np.uint8)
    for i, path in enumerate(paths):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        out[i], size = load_image_file_sized(path, spec)  # names a file that is no image
        check_size(str(path), size, spec)
    return out


def check_size(name: str, size: tuple[int, int], spec: ImageSpec) -> None:
    """An image under `MIN_IMAGE_SIDE` pixels a side (or the network's own size, if smaller) is a ValueError
    naming it: scaled up to S x S it would be a flat patch."""
    least, (width, height) = min(MIN_IMAGE_SIDE, spec.size), size
    if min(width, height) < least:
        raise ValueError(f"{name}: {width} x {height} pixels, too small to hold a drawing; give an image "
                         f"at least {least} x {least} pixels (the model reads {spec.size} x {spec.size})")


def blank_images(images: np.ndarray) -> np.ndarray:
    """[N] bool: which images [N, C, S, S] are blank, every pixel of each channel the same (no strokes)."""
    return (images == images[:, :, :1, :1]).all(axis=(1, 2, 3))


def list_queries(paths: Iterable[str | Path]) -> list[Path]:
    """Files and folders -> image files, in the order given; a folder gives its files (recursively) sorted."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise ValueError(f"{path}: query folder holds no image files")
            out.extend(files)
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such query file or folder")
    if not out:
        raise ValueError("no query images given")
    return out


@dataclasses.dataclass(frozen=True)
class Support:
    """Labelled example images: the support set of a few-shot task."""

    class_names: tuple[str, ...]  # [C]
    labels: np.ndarray  # [N] int64 index into class_names
    images: np.ndarray  # [N, C, S, S] uint8, preprocessed by the model's ImageSpec
    paths: tuple[Path, ...]  # [N] the file each image came from


def support_files(folder: str | Path) -> dict[str, list[Path]]:
    """Class name -> its example files, for either support layout (see `SUPPORT_LAYOUTS`)."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such support folder")
    if not folder.is_dir():
        raise ValueError(f"{folder}: the support must be {SUPPORT_LAYOUTS}")
    entries = _visible(folder)
    subfolders = [p for p in entries if p.is_dir()]
    files = [p for p in entries if not p.is_dir()]
    if subfolders and files:
        raise ValueError(f"{folder}: holds both class subfolders ({subfolders[0].name}) and image files "
                         f"({files[0].name}); the support must be {SUPPORT_LAYOUTS}")
    if not entries:
        raise ValueError(f"{folder}: empty support folder; the support must be {SUPPORT_LAYOUTS}")
    classes: dict[str, list[Path]] = {}
    if subfolders:
        for sub in subfolders:
            examples = _visible(sub)
            if not examples:
                raise ValueError(f"{sub}: class folder {sub.name!r} holds no images")
            nested = [p for p in examples if p.is_dir()]
            if nested:
                raise ValueError(f"{nested[0]}: a class folder holds image files, not folders")
            classes[sub.name] = examples
        return classes
    for path in files:
        if path.stem in classes:
            raise ValueError(f"{path} and {classes[path.stem][0].name} both name class {path.stem!r}; "
                             "give a class several examples as a subfolder")
        classes[path.stem] = [path]
    return classes


def read_support(folder: str | Path, spec: ImageSpec) -> Support:
    """Read a support folder in either layout (see `SUPPORT_LAYOUTS`), classes in name order.

    A blank example is a ValueError naming it: it would pull its class's prototype towards the empty
    page, for every query after, and a bank would keep it.
    """
    classes = support_files(folder)
    paths = [p for examples in classes.values() for p in examples]
    labels = np.concatenate([np.full(len(examples), c) for c, examples in enumerate(classes.values())])
    images = read_images(paths, spec)
    blank = blank_images(images)
    if blank.any():
        i = int(np.argmax(blank))
        raise ValueError(f"{paths[i]}: blank image (every pixel the same, no strokes), no example of class "
                         f"{list(classes)[labels[i]]!r}; remove it from the support or replace it with a drawing")
    return Support(class_names=tuple(classes), labels=labels.astype(np.int64), images=images, paths=tuple(paths))


# ---------------------------------------------------------------------------- the bank


@dataclasses.dataclass(frozen=True)
class Bank:
    """Enrolled classes: one embedding per example image, and the model that made them."""

    class_names: tuple[str, ...]  # [C]
    labels: np.ndarray  # [M] int64 index into class_names
    embeddings: np.ndarray  # [M, D] float32, `embed_all` of each example
    model_identity: str  # `model_identity` of the network that embedded them
    model_source: str  # where that network was loaded from, for messages

    def save(self, path: str | Path) -> None:
        """Write the bank as .npz, under a temporary name renamed into place."""
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            np.savez(fh, kind=np.array(BANK_KIND), class_names=np.array(self.class_names, dtype=str),
                     labels=self.labels, embeddings=self.embeddings,
                     model_identity=np.array(self.model_identity), model_source=np.array(self.model_source))

    @classmethod
    def load(cls, path: str | Path) -> Bank:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such bank file")
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["kind"]) != BANK_KIND:
                    raise KeyError("kind")
                return cls(class_names=tuple(str(n) for n in data["class_names"]),
                           labels=data["labels"].astype(np.int64), embeddings=data["embeddings"].astype(np.float32),
                           model_identity=str(data["model_identity"]), model_source=str(data["model_source"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: not a bank written by `enroll`") from exc

    def check_model(self, model: Model, where: str = "the bank") -> None:
        """Embeddings of one network mean nothing to another: refuse any other model."""
        if self.model_identity != model.identity:
            raise ValueError(f"{where} was enrolled with another model ({self.model_source}, weights "
                             f"{self.model_identity[:12]}) than {model.source} (weights {model.identity[:12]}); "
                             "enroll the support again with this model")


@contextlib.contextmanager
def bank_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `<bank>.lock` beside the bank `path`: writers of one bank take turns.

    The holder removes the lock file before letting go, so a waiter can wake up holding a file that is
    no longer there: it checks that the path still names the file it locked, and locks afresh if not.
    The kernel drops the lock of a process that dies, even by kill -9; such a process leaves the lock
    file behind, which the next writer takes and removes.
    """
    lock = Path(path).with_name(Path(path).name + ".lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        except FileNotFoundError:
            pass  # the holder before us removed it: lock the one there now
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def add_to_bank(path: str | Path, model: Model, support: Support) -> tuple[Bank | None, Bank]:
    """Enroll `support` into the bank file at `path` (a new one if there is none): (the bank before, after).

    `bank_lock` is held from reading the bank to renaming the new one into place, so concurrent calls
    add up instead of the last one dropping the others' classes. A writer killed while writing leaves
    the old bank whole (`Bank.save` renames into place) and its temporary file, which the next
    `atomic_path` write of the bank removes.
    """
    path = Path(path)
    with bank_lock(path):
        existing = Bank.load(path) if path.exists() else None
        if existing is not None:
            existing.check_model(model, where=str(path))
        bank = enroll(model, support, existing)
        bank.save(path)
    return existing, bank


def enroll(model: Model, support: Support, bank: Bank | None = None) -> Bank:
    """Embed the support once. With `bank`, its classes are kept and the support is added: a new
    name becomes a new class, a name it has gets more examples."""
    embeddings = model.embed(support.images)
    if bank is None:
        return Bank(class_names=support.class_names, labels=support.labels, embeddings=embeddings,
                    model_identity=model.identity, model_source=model.source)
    bank.check_model(model)
    names = list(dict.fromkeys([*bank.class_names, *support.class_names]))
    index = {name: i for i, name in enumerate(names)}
    labels = np.array([index[support.class_names[label]] for label in support.labels], dtype=np.int64)
    return dataclasses.replace(bank, class_names=tuple(names), labels=np.concatenate([bank.labels, labels]),
                               embeddings=np.concatenate([bank.embeddings, embeddings]))


# ---------------------------------------------------------------------------- predict, verify


@dataclasses.dataclass(frozen=True)
class Prediction:
    classes: np.ndarray  # [Q, K] str: the K best classes of each query, best first
    scores: np.ndarray  # [Q, K] float32: their similarity scores


def predict(model: Model, bank: Bank, images: np.ndarray, top_k: int = 1) -> Prediction:
    """The `top_k` best enrolled classes for each query image [Q, C, S, S] uint8, scored as in evaluation:
    all queries against all classes in one batched pass."""
    bank.check_model(model)
    n_classes = len(bank.class_names)
    if not 1 <= top_k <= n_classes:
        raise ValueError(f"top_k={top_k}; it must be between 1 and the {n_classes} enrolled classes")
    classes, scores = model.class_scores(images, bank.embeddings, bank.labels)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    names = np.asarray(bank.class_names)[classes]
    return Prediction(classes=names[best], scores=np.take_along_axis(scores, best, axis=1).astype(np.float32))


@dataclasses.dataclass(frozen=True)
class Verdict:
    same: bool  # similarity >= threshold
    similarity: float
    threshold: float
    target: str  # what the threshold was calibrated for (`eer`, `far@0.01`), or `given`


def verify(model: Model, a: np.ndarray, b: np.ndarray, threshold: float | None = None) -> Verdict:
    """Same class or not, for two images [C, S, S] uint8; `threshold` overrides the model's calibrated one."""
    if threshold is not None:
        if not math.isfinite(threshold):
            raise ValueError(f"threshold={threshold}: the similarity threshold must be a finite number")
        target = "given"
    elif model.verify is not None:
        threshold, target = model.verify.threshold, model.verify.target
    else:
        raise ValueError(f"{model.source} carries no calibrated verification threshold (it was trained before "
                         "`siamese.verify_target` existed); retrain it, or give a threshold")
    similarity = model.pair_similarity(a, b)
    return Verdict(same=similarity >= threshold, similarity=similarity, threshold=float(threshold), target=target)
