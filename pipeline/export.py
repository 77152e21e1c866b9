"""A trained Siamese network as ONNX, and `OnnxModel`, which runs it with ONNX Runtime and without torch.

`train_classifier` writes `model.onnx` beside `model.safetensors`. `oneshot-gda` on such a folder
loads this file instead of torch: importing torch takes 1.5 to 3 s on 2 cores, ONNX Runtime 0.3 s,
which is the difference between a prediction in well under a second and one in several.

The graph takes uint8 images [N, C, S, S] and embeddings `others` [M, D], and returns the images'
embeddings [N, D] and their similarity to `others` [N, M], both as `SiameseNet.embed` and
`SiameseNet.similarity` compute them in fp32. The file's metadata carries what `load_model` reads
from a checkpoint (the image spec, the verification threshold), the network's `model_identity`, so
that a bank enrolled by either engine is accepted by the other, and the sha256 of the checkpoint
it was exported from: a folder whose checkpoint changed since is refused, not run stale.

This module imports neither torch nor onnx until `export_onnx` is called.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.classifiers.verification import Calibration
from pipeline.data.images import ImageSpec
from pipeline.io import atomic_path

if TYPE_CHECKING:
    from pipeline.classifiers.network import SiameseNet

ONNX_FILENAME = "model.onnx"
KIND = "oneshot-gda siamese onnx"
OPSET = 17


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_onnx(net: SiameseNet, path: str | Path, *, identity: str, checkpoint: str | Path,
                verify: dict[str, Any] | None, image_spec: dict[str, Any]) -> None:
    """Write `net` (fp32, eval mode) as the graph described above, with its metadata; renamed into place.

    identity: `inference.model_identity(net)`; checkpoint: the model.safetensors file it was saved to.
    """
    import onnx
    import torch

    class Graph(torch.nn.Module):
        def __init__(self, net: SiameseNet):
            super().__init__()
            self.net = net

        def forward(self, images: torch.Tensor, others: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            embeddings = self.net.embed(images.float() / 255.0).float()
            return embeddings, self.net.similarity(embeddings, others)

    graph = Graph(net).float().eval()
    c, s, d = int(net.config["in_channels"]), net.image_size, int(net.config["embedding_dim"])
    example = (torch.zeros(2, c, s, s, dtype=torch.uint8), torch.zeros(3, d))
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # torch's TorchScript-based exporter, which torch deprecates for its torch.export-based one: that
        # one takes 4 to 9 s a network on 2 cores against 0.3 to 2 s, for each of a run's classifiers, and
        # needs onnxscript. torch is pinned (requirements.lock); tests/test_export.py checks what it writes.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(graph, example, str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["images", "others"], output_names=["embeddings", "similarity"],
                          dynamic_axes={"images": {0: "n"}, "others": {0: "m"}, "embeddings": {0: "n"},
                                        "similarity": {0: "n", 1: "m"}})
        model = onnx.load(str(tmp))
        props = {"kind": KIND, "identity": identity, "checkpoint_sha256": file_sha256(checkpoint),
                 "config": json.dumps(net.config), "verify": json.dumps(verify), "image_spec": json.dumps(image_spec)}
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(tmp))


def export_checkpoint(checkpoint: str | Path) -> Path:
    """Export a `train_classifier` checkpoint (its folder or model.safetensors) as model.onnx beside it."""
    from pipeline.checkpoints import FILENAME
    from pipeline.classifiers.network import image_spec_of, load_siamese, model_identity

    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        checkpoint = checkpoint / FILENAME
    net, extra = load_siamese(checkpoint)
    out = checkpoint.with_name(ONNX_FILENAME)
    export_onnx(net, out, identity=model_identity(net), checkpoint=checkpoint, verify=extra.get("verify"),
                image_spec=image_spec_of(net, extra.get("image_spec")))
    return out


@dataclasses.dataclass(frozen=True)
class OnnxModel:
    """An exported network, run by ONNX Runtime: the surface of `inference.TrainedModel` without torch."""

    session: Any  # onnxruntime.InferenceSession
    source: str
    identity: str
    verify: Calibration | None
    spec: ImageSpec
    config: dict[str, Any]

    @property
    def has_head(self) -> bool:
        return self.config.get("loss") == "bce"

    def _run(self, images: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        embeddings, similarity = self.session.run(None, {"images": np.ascontiguousarray(images, dtype=np.uint8),
                                                         "others": np.ascontiguousarray(others, dtype=np.float32)})
        return embeddings, similarity

    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 [N, C, S, S] -> float32 [N, D]."""
        none = np.zeros((1, int(self.config["embedding_dim"])), np.float32)
        parts = [self._run(images[i:i + batch_size], none)[0] for i in range(0, len(images), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, none.shape[1]), np.float32)

    def class_scores(self, images: np.ndarray, embeddings: np.ndarray, labels: np.ndarray,
                     batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Queries [Q, C, S, S] uint8 against support embeddings [M, D] of `labels` [M]: (classes [K] sorted,
        scores [Q, K]), a class's score the similarity to the mean of its embeddings (`class_prototypes`)."""
        classes, inverse = np.unique(labels, return_inverse=True)
        sums = np.zeros((len(classes), embeddings.shape[1]), np.float64)
        np.add.at(sums, inverse, embeddings)
        prototypes = sums / np.bincount(inverse, minlength=len(classes))[:, None]
        if not self.has_head:
            prototypes /= np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
        parts = [self._run(images[i:i + batch_size], prototypes)[1] for i in range(0, len(images), batch_size)]
        return classes, np.concatenate(parts)

    def pair_similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """Likeness of two images [C, S, S] uint8."""
        return float(self._run(a[None], self.embed(b[None]))[1][0, 0])


def onnx_beside(checkpoint: Path) -> Path | None:
    """The model.onnx exported from a checkpoint (its folder or model.safetensors), or None if there is none."""
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    candidate = folder / ONNX_FILENAME
    return candidate if candidate.is_file() else None


def load_onnx(path: Path, checkpoint: Path | None, source: str, threads: int | None = None) -> OnnxModel:
    """An `OnnxModel` from `path`; checked against the `checkpoint` file it must have been exported from."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a file that is no model
        raise ValueError(f"{path}: not an ONNX model ONNX Runtime can load ({exc}); re-export it with "
                         f"`oneshot-gda export --model {path.parent}`") from exc
    props = session.get_modelmeta().custom_metadata_map
    if props.get("kind") != KIND:
        raise ValueError(f"{path}: an ONNX model, but not one exported by oneshot-gda; re-export it with "
                         f"`oneshot-gda export --model {path.parent}`")
    if checkpoint is not None and file_sha256(checkpoint) != props["checkpoint_sha256"]:
        raise ValueError(f"{path} was exported from another {checkpoint.name} than the one beside it now; "
                         f"re-export it with `oneshot-gda export --model {path.parent}`")
    verify = json.loads(props["verify"])
    return OnnxModel(session=session, source=source, identity=props["identity"],
                     verify=Calibration(**verify) if verify else None,
                     spec=ImageSpec(**json.loads(props["image_spec"])), config=json.loads(props["config"]))
