"""`oneshot-gda`: use a trained Siamese network on new classes, one example each.

    oneshot-gda predict --model models/classifiers/vae --support support/ --query q1.png queries/
    oneshot-gda enroll  --model models/classifiers/vae --support support/ --out bank.npz
    oneshot-gda predict --model models/classifiers/vae --bank bank.npz --query queries/ --top-k 3
    oneshot-gda verify  --model models:/omniglot-oneshot@champion a.png b.png
    oneshot-gda export  --model models/classifiers/vae     # (re)writes model.onnx beside the checkpoint

A model folder with a `model.onnx` (every `train_classifier` writes one) runs on ONNX Runtime, without
importing torch: a prediction takes well under a second, where importing torch alone takes 1.5 to 3 s
on 2 cores. `--engine torch` runs the checkpoint instead; MLflow URIs always run with torch.

Bad input (a missing file, a non-image, an empty support folder, a file that is not a model or a
bank, an image under 8 x 8 pixels, a blank support image, `--output` or `--out` in a folder that does
not exist, a tracking server that does not answer) prints `error: ...` naming it and exits with
status 1, having written nothing. A blank query (every pixel the same) is still answered, with a
`warning: ...` on stderr: one empty scan should not cost the rows of all the others.

Concurrent `enroll`s into one bank take turns on `<bank>.lock` beside it, so each one's classes are
kept. The lock file is removed after each enroll; one killed (kill -9) leaves it behind, harmlessly:
the kernel has released its lock, and the next enroll takes it over and removes it.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline import export, inference
from pipeline.io import atomic_path

MODEL_HELP = ("a trained classifier: models/classifiers/<variant> (its folder or model.safetensors) of a pipeline "
              "run, or an MLflow model URI "
              "(models:/<name>@champion, models:/<name>/<version>, runs:/<run id>/<variant>) in MLFLOW_TRACKING_URI "
              "or the project's mlflow.db")
ENGINE_HELP = ("auto (default): the model.onnx beside the checkpoint if there is one, on ONNX Runtime, else torch; "
               "torch: the checkpoint; onnx: model.onnx only")
SUPPORT_HELP = "folder of class subfolders of example images, or folder of image files each named by its class"


def to_csv(header: list[str], rows: list[list[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def check_output(path: Path | None, flag: str) -> None:
    """Fail before any work when the file to write cannot be: a typo in a folder name must not create it."""
    if path is None:
        return
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path}: is a folder; give the name of the file to write in it")
    if not path.parent.is_dir():
        what = "not a folder" if path.parent.exists() else "no such folder"
        raise FileNotFoundError(f"{flag} {path}: {path.parent}: {what}; create it first, or write elsewhere")


def warn_blank(paths: Sequence[Path], images: np.ndarray) -> None:
    """A blank query gets an answer, but not one that means anything: say so, naming it."""
    for path, blank in zip(paths, inference.blank_images(images), strict=True):
        if blank:
            print(f"warning: {path}: blank image (every pixel the same, no strokes); its answer means nothing",
                  file=sys.stderr)


def emit(text: str, output: Path | None) -> None:
    """Print, or write `output` under a temporary name renamed into place."""
    if output is None:
        sys.stdout.write(text)
        return
    with atomic_path(output) as tmp:
        tmp.write_text(text)


def run_predict(args: argparse.Namespace) -> None:
    if args.top_k < 1:
        raise ValueError(f"--top-k {args.top_k}: must be 1 or more (how many of the best classes to list)")
    check_output(args.output, "--output")
    model = inference.load_model(args.model, args.engine)
    if args.bank is not None:
        bank = inference.Bank.load(args.bank)
        bank.check_model(model, where=str(args.bank))
    else:
        bank = inference.enroll(model, inference.read_support(args.support, model.spec))
    queries = inference.list_queries(args.query)
    images = inference.read_images(queries, model.spec)
    result = inference.predict(model, bank, images, args.top_k)
    warn_blank(queries, images)
    header = ["query", "prediction", "score"]
    for k in range(2, args.top_k + 1):
        header += [f"prediction_{k}", f"score_{k}"]
    rows = [[str(path), *(v for name, score in zip(names, scores, strict=True) for v in (name, f"{score:.6f}"))]
            for path, names, scores in zip(queries, result.classes, result.scores, strict=True)]
    emit(to_csv(header, rows), args.output)


def run_enroll(args: argparse.Namespace) -> None:
    check_output(args.out, "--out")
    model = inference.load_model(args.model, args.engine)
    support = inference.read_support(args.support, model.spec)  # before the lock: others wait only for the merge
    existing, bank = inference.add_to_bank(args.out, model, support)
    before = 0 if existing is None else len(existing.class_names)
    print(f"{args.out}: {len(bank.class_names)} classes ({len(bank.class_names) - before} new), "
          f"{len(bank.labels)} examples ({len(support.labels)} added), model {model.source}")


def run_verify(args: argparse.Namespace) -> None:
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise ValueError(f"--threshold {args.threshold}: not a finite number; give a similarity such as 0.5, "
                         "or leave it out to use the threshold calibrated at training")
    model = inference.load_model(args.model, args.engine)
    images = inference.read_images([args.a, args.b], model.spec)
    warn_blank([args.a, args.b], images)
    a, b = images
    verdict = inference.verify(model, a, b, args.threshold)
    print(to_csv(["a", "b", "same", "similarity", "threshold", "target"],
                 [[args.a, args.b, str(verdict.same).lower(), f"{verdict.similarity:.6f}", f"{verdict.threshold:.6f}",
                   verdict.target]]), end="")


def run_export(args: argparse.Namespace) -> None:
    out = export.export_checkpoint(args.model)
    print(f"{out}: the network of {args.model} as ONNX; oneshot-gda runs it without torch")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="oneshot-gda", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = ap.add_subparsers(dest="command", required=True)

    p = commands.add_parser("predict", help="classify query images among the support's classes (CSV)")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--engine", choices=inference.ENGINES, default="auto", help=ENGINE_HELP)
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--support", type=Path, help=SUPPORT_HELP)
    given.add_argument("--bank", type=Path, help="a bank written by `enroll` with the same model")
    p.add_argument("--query", nargs="+", required=True, type=Path,
                   help="image files and/or folders (a folder: its image files, recursively, in name order)")
    p.add_argument("--top-k", type=int, default=1, help="also list the 2nd..K-th best classes (default 1)")
    p.add_argument("--output", type=Path, help="CSV file to write (default: print)")
    p.set_defaults(run=run_predict)

    e = commands.add_parser("enroll", help="embed a support set once into a bank file; adds to an existing bank")
    e.add_argument("--model", required=True, help=MODEL_HELP)
    e.add_argument("--engine", choices=inference.ENGINES, default="auto", help=ENGINE_HELP)
    e.add_argument("--support", required=True, type=Path, help=SUPPORT_HELP)
    e.add_argument("--out", required=True, type=Path, help="bank file (.npz) to write, or to add the classes to")
    e.set_defaults(run=run_enroll)

    v = commands.add_parser("verify", help="do two images show the same class? (CSV)")
    v.add_argument("--model", required=True, help=MODEL_HELP)
    v.add_argument("--engine", choices=inference.ENGINES, default="auto", help=ENGINE_HELP)
    v.add_argument("a", type=Path, help="an image file")
    v.add_argument("b", type=Path, help="another image file")
    v.add_argument("--threshold", type=float,
                   help="decide with this similarity threshold instead of the one calibrated at training")
    v.set_defaults(run=run_verify)

    x = commands.add_parser("export", help="write model.onnx beside a checkpoint (what `--engine onnx` runs)")
    x.add_argument("--model", required=True, type=Path, help="a model folder or its model.safetensors")
    x.set_defaults(run=run_export)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # The output is CSV for other programs; MLflow's download progress bars would only clutter stderr.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        args.run(args)
    except (OSError, ValueError) as exc:  # the library's errors name the file and what is wrong with it
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
