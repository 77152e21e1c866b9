"""Prediction speed end to end, with each engine (ONNX Runtime on model.onnx, torch on the checkpoint):

- throughput: enroll 100 classes from image files, then predict 1,000 query image files through the
  Python API (model loading, image decoding and preprocessing, embedding, scoring): queries/s from
  files, and of `inference.predict` itself on the decoded queries (embedding and scoring);
- with --cli, the `oneshot-gda predict` command as a process (adds interpreter start-up and imports):
  the same 1,000 queries, and the latency of one query against a support of 20 images.

Prints seconds per step and queries per second. The drawings are real Omniglot evaluation drawings
(OMNIGLOT_DIR), written out as PNG files; the model is a trained one if given (its folder, with the
model.onnx `train_classifier` writes), else a fresh network of the default size, exported here.

    python benchmarks/predict.py [--model models/classifiers/vae] [--repeats 3] [--cli]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from pipeline import inference
from pipeline.checkpoints import FILENAME
from pipeline.classifiers.network import SiameseNet, save_siamese
from pipeline.data.omniglot import list_zip, locate_zips
from pipeline.data.prepare import DataConfig
from pipeline.export import export_checkpoint


def write_drawings(folder: Path, n_classes: int, n_queries: int) -> tuple[Path, Path]:
    """support/<class>.png (drawer 1 of each of n_classes classes) and queries/NNNN.png (other drawers)."""
    zip_path = locate_zips(DataConfig())["images_evaluation"]
    classes = list(list_zip(zip_path, "images_evaluation").items())[:n_classes]
    if len(classes) < n_classes:
        raise ValueError(f"{zip_path} has {len(classes)} classes, fewer than --classes {n_classes}")
    support, queries = folder / "support", folder / "queries"
    support.mkdir(parents=True)
    queries.mkdir()
    with zipfile.ZipFile(zip_path) as archive:
        for info, members in classes:
            (support / f"{info.alphabet}_{info.character}.png").write_bytes(archive.read(members[0]))
        for q in range(n_queries):
            _, members = classes[q % n_classes]
            (queries / f"{q:04d}.png").write_bytes(archive.read(members[1 + (q // n_classes) % 19]))
    return support, queries


def predict_once(model_path: Path, support: Path, queries: Path, engine: str) -> dict[str, float]:
    """One end-to-end prediction through the API; seconds per step."""
    times: dict[str, float] = {}
    start = last = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal last
        now = time.perf_counter()
        times[step] = now - last
        last = now

    model = inference.load_model(model_path, engine)  # type: ignore[arg-type]
    lap("load model")
    support_set = inference.read_support(support, model.spec)
    query_images = inference.read_images(inference.list_queries([queries]), model.spec)
    lap("read + preprocess images")
    bank = inference.enroll(model, support_set)
    lap("embed support")
    inference.predict(model, bank, query_images)
    lap("embed + score queries")
    times["total"] = time.perf_counter() - start
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a trained classifier: its folder or model.safetensors "
                    "(default: a fresh network of the default size)")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    ap.add_argument("--cli", action="store_true", help="also time the `predict` command as a subprocess")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        folder = Path(tmp)
        model_path = args.model
        if model_path is None:
            torch.manual_seed(0)
            model_path = folder / "model"
            save_siamese(SiameseNet(28), model_path / FILENAME)
            export_checkpoint(model_path)
        support, queries = write_drawings(folder, args.classes, args.queries)
        small, one = write_drawings(folder / "latency", 20, 1)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
              f"model {args.model or 'fresh SiameseNet(28)'}; {args.classes} classes, {args.queries} queries")
        engines = ["onnx", "torch"]
        for engine in engines:
            for r in range(args.repeats):
                times = predict_once(model_path, support, queries, engine)
                steps = ", ".join(f"{k} {v:.3f}s" for k, v in times.items() if k != "total")
                print(f"api {engine:<5} run {r + 1}: {times['total']:.3f} s, {args.queries / times['total']:,.0f} "
                      f"queries/s from files; predict() {args.queries / times['embed + score queries']:,.0f} "
                      f"queries/s ({steps})")
        if args.cli:
            # The subprocess imports the same `pipeline` as this script, wherever that is.
            env = {**os.environ, "PYTHONPATH": str(Path(inference.__file__).resolve().parents[1])}
            for engine in engines:
                for what, (s_dir, q_dir, n) in {"1,000 queries, 100 classes": (support, queries, args.queries),
                                                "1 query, 20 support images": (small, one, 1)}.items():
                    command = [sys.executable, "-m", "pipeline.cli", "predict", "--model", str(model_path),
                               "--engine", engine, "--support", str(s_dir), "--query", str(q_dir),
                               "--output", str(folder / "out.csv")]
                    seconds = []
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        subprocess.run(command, check=True, env=env)
                        seconds.append(time.perf_counter() - start)
                    print(f"cli {engine:<5} {what}: " + ", ".join(f"{t:.3f} s" for t in seconds)
                          + f" (best {min(seconds):.3f} s, {n / min(seconds):,.0f} queries/s; with interpreter "
                          "start-up and imports)")


if __name__ == "__main__":
    main()
