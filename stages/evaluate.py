"""Stage `evaluate`: score every variant on the same novel-class episodes; write metrics and log to MLflow.

MLflow gets one parent run per pipeline run and, nested under it, one run per variant with its
params, metrics (with the paired delta to the baseline), learning curves, sample grid and model,
so that a user filters one pipeline run and compares its variants side by side.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline import inference, serving, tracking
from pipeline.classifiers.fewshot import embed_all
from pipeline.classifiers.network import load_siamese
from pipeline.config import TrackingConfig, load_params, section
from pipeline.data.fewshot import FewShotSet
from pipeline.data.images import to_tensor
from pipeline.evaluation import (
    EvaluationConfig,
    build_episodes,
    fixed_support_episodes,
    headline_view,
    per_episode_accuracy,
    summarize,
    synthetic_measures,
    synthetic_support,
)
from pipeline.io import read_json, staged, write_json
from pipeline.lifecycle import guard_stage
from pipeline.plots import accuracy_bars, accuracy_table, curve_table, learning_curves, sweep_curve, sweep_table
from pipeline.variants import VariantConfig


def results_table(view: dict[str, dict[str, float]]) -> str:
    """The headline view as a Markdown table: the pipeline run's description in the MLflow UI."""
    columns = list(dict.fromkeys(k for row in view.values() for k in row))
    lines = ["| variant | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for variant, row in view.items():
        cells = ["" if c not in row else f"{row[c]:+.3f}" if c.startswith("delta") else f"{row[c]:.3f}"
                 for c in columns]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def log_to_mlflow(uri: str, metrics: dict, view: dict, variants: dict[str, VariantConfig], ckpts: dict,
                  histories: dict[str, pd.DataFrame], args: argparse.Namespace, params: dict,
                  evaluation: EvaluationConfig, pictures: list[Path], sweeps: dict[str, pd.DataFrame],
                  example: pd.DataFrame, registry: Callable[[Any, dict[str, Any], str], None] | None) -> str:
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    logged: dict[str, Any] = {}
    tags = tracking.run_tags(kind="pipeline")
    name = tags["dvc_exp"] or f"pipeline {tags['git_commit'][:8]}"
    with mlflow.start_run(run_name=name, tags=tags) as parent:
        group = parent.info.run_id
        mlflow.set_tag("run_group", group)
        mlflow.log_params({"evaluation." + k: str(v) for k, v in params["evaluation"].items()})
        tracking.log_dataset(client, group, args.data, "evaluation")
        shared = tracking.share_view(client, parent.info.experiment_id,
                                     [f"acc_{p}" for p in evaluation.protocols] + [
                                         f"delta_{evaluation.headline}_vs_{evaluation.baseline}"], ["variant"])
        print(f"MLflow UI: {shared} shows the runs with the headline columns (`make ui`)")
        # The runs that made what this one scores, nested below it: the generators and the reference embedding
        # here, each classifier's training under its variant's run.
        for folder in [Path(args.generators) / g for g in params["generator"]["enabled"]] + [Path(args.reference)]:
            if (folder / "run.json").is_file():
                tracking.adopt_run(client, read_json(folder / "run.json"), uri, group, group)
        # The headline of every variant on the pipeline run itself (`<variant>.acc_20way`, ...), and the table
        # as its description: the run list shows the whole result without opening a variant.
        mlflow.log_metrics({f"{variant}.{k}": v for variant, row in view.items() for k, v in row.items()})
        mlflow.set_tag("mlflow.note.content", f"One pipeline run: each variant's run is nested below.\n\n"
                                              f"{results_table(view)}")
        for picture in pictures:
            mlflow.log_artifact(str(picture))
        for generator in sweeps:
            mlflow.log_artifact(str(Path(args.sweep) / f"{generator}.csv"), "sweep")
        for variant, vcfg in variants.items():
            ckpt = ckpts[variant]
            run_info = read_json(Path(args.classifiers) / variant / "run.json")
            vtags = tracking.run_tags(kind="variant", variant=variant, generator=vcfg.synthetic,
                                      run_group=group, ceiling=str(vcfg.ceiling).lower(),
                                      train_on="+".join(vcfg.train_on), source_classes=str(vcfg.uses_source).lower(),
                                      training_run_id=run_info.get("mlflow_run_id") or "")
            label = f"{variant} (ceiling)" if vcfg.ceiling else variant
            with mlflow.start_run(run_name=label, nested=True, tags=vtags) as child:
                tracking.adopt_run(client, run_info, uri, child.info.run_id, group)
                # siamese.*: the params it trained with, its own `siamese` changes included
                flat = {f"variant.{k}": v for k, v in ckpt["variant_config"].items() if k != "siamese"}
                flat.update({f"siamese.{k}": v for k, v in ckpt["siamese_config"].items()})
                flat.update({f"augment.{k}": v for k, v in ckpt["augment_config"].items()})
                if vcfg.synthetic != "none":
                    flat.update({f"generator.{vcfg.synthetic}.{k}": v
                                 for k, v in params["generator"][vcfg.synthetic].items()})
                    flat["synthesis.n_per_exemplar"] = params["synthesis"]["n_per_exemplar"]
                mlflow.log_params({k: str(v) for k, v in flat.items()})
                tracking.log_dataset(client, child.info.run_id, args.data, "evaluation")
                mlflow.log_metrics(metrics[variant])
                if variant in histories:
                    frame = histories[variant]
                    now = int(time.time() * 1000)
                    batch = [Metric(key, float(v), now, int(step))
                             for key in frame.columns if key not in ("step", "epoch")
                             for step, v in frame[["step", key]].dropna().itertuples(index=False)]
                    for start in range(0, len(batch), 1000):
                        client.log_batch(child.info.run_id, metrics=batch[start:start + 1000])
                    mlflow.log_artifact(str(Path(args.classifiers) / variant / "metrics.csv"), "history")
                if vcfg.synthetic in sweeps:  # a curve in the UI: accuracy at step = synthetic drawings per exemplar
                    frame = sweeps[vcfg.synthetic]
                    key = next(c for c in frame.columns if c.startswith("acc_") and not c.endswith("_ci95"))
                    for count, value in frame[["n_synthetic", key]].itertuples(index=False):
                        mlflow.log_metric(f"sweep/{key}", float(value), step=int(count))
                grid = Path(args.reports) / f"samples_{vcfg.synthetic}.png"
                if vcfg.synthetic != "none" and grid.is_file():
                    mlflow.log_artifact(str(grid))
                # A pyfunc named after the variant that stands alone (serving.py); its metadata carries the
                # verification threshold to `oneshot-gda verify --model runs:/<run id>/<variant>`.
                logged[variant] = serving.log_model(
                    Path(args.classifiers) / variant, variant, example,
                    {"variant": variant, "verify": ckpt.get("verify"), "image_spec": ckpt.get("image_spec")})
        if registry is not None:
            registry(client, logged, group)
    return group


def champion_registry(tracking_cfg: TrackingConfig, cfg: EvaluationConfig, variants: dict[str, VariantConfig],
                      accuracy: dict[str, dict[str, np.ndarray]], dataset: FewShotSet, images: torch.Tensor,
                      episodes: dict) -> Callable[[Any, dict[str, Any], str], None]:
    """Register the best one-shot variant's model (ceilings are no one-shot models) and move `@champion` to it
    when it scores at least as well as the present champion on this run's headline episodes."""
    name = tracking_cfg.registered_model or tracking_cfg.experiment
    key = f"acc_{cfg.headline}"
    scores = {v: float(accuracy[v][cfg.headline].mean()) for v in variants if not variants[v].ceiling}

    def score_champion(uri: str) -> float | None:
        champion = inference.load_model(uri, engine="torch")
        if not isinstance(champion, inference.TrainedModel) or champion.spec != dataset.spec:
            return None
        found = per_episode_accuracy(champion.net, embed_all(champion.net, images),
                                     {cfg.headline: episodes[cfg.headline]})
        return float(found[cfg.headline].mean())

    def register(client: Any, logged: dict[str, Any], group: str) -> None:
        import mlflow

        best = max(scores, key=scores.__getitem__)
        version = mlflow.register_model(logged[best].model_uri, name, tags={
            "variant": best, key: f"{scores[best]:.5f}", "run_group": group})
        decision = serving.promote(client, name, version.version, scores[best], key, score_champion)
        print(f"MLflow: registered {best} as {name} v{version.version}; {decision}")

    return register


def input_example(dataset: FewShotSet) -> pd.DataFrame:
    """Two novel classes' exemplars as the support and another drawing of the first as the query: what a logged
    model's `predict` takes (serving.py)."""
    first, second = dataset.classes("novel")[:2]
    a, b = (np.flatnonzero(dataset.labels == c) for c in (first, second))
    images = [dataset.images[a[0]], dataset.images[b[0]], dataset.images[a[1]]]
    return pd.DataFrame({"image": [serving.encode_array(image, dataset.inverted) for image in images],
                         "label": [str(dataset.class_names[first]), str(dataset.class_names[second]), ""]})


def main() -> None:
    guard_stage()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", required=True, help="prepared dataset.npz")
    ap.add_argument("--classifiers", required=True, help="folder of <variant>/model.safetensors")
    ap.add_argument("--synthetic", required=True, help="folder of <generator>/ synthetic sets")
    ap.add_argument("--reference", required=True, help="the reference embedding's folder (source classes only)")
    ap.add_argument("--generators", required=True, help="folder of <generator>/ (their run.json: the MLflow run tree)")
    ap.add_argument("--sweep", required=True, help="folder of <generator>.csv accuracy-vs-count sweeps")
    ap.add_argument("--metrics", required=True, help="metrics JSON to write")
    ap.add_argument("--headline", required=True,
                    help="folder for one <variant>.json each: the headline view (`dvc metrics show`, a row a variant)")
    ap.add_argument("--reports", required=True, help="folder for pictures")
    ap.add_argument("--plots", required=True,
                    help="folder for the data of `dvc plots` (curves.csv, accuracy.csv, sweep.csv)")
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = section(params, EvaluationConfig, "evaluation")
    tracking_cfg = section(params, TrackingConfig, "tracking")
    if not isinstance(params.get("variants"), dict) or not params["variants"]:
        raise ValueError("params.yaml: `variants` must map each variant name to its settings")
    variants = {v: section(params, VariantConfig, f"variants.{v}") for v in params["variants"]}
    uri = tracking.setup(tracking_cfg)  # fail on an unreachable server before the work, not after

    dataset = FewShotSet.load(args.data)
    episodes = build_episodes(dataset, cfg)
    images = to_tensor(dataset.images)
    accuracy, nets, ckpts, embeddings = {}, {}, {}, {}
    for variant in variants:
        path = Path(args.classifiers) / variant
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no trained classifier for variant {variant!r}; run `dvc repro`")
        nets[variant], ckpts[variant] = load_siamese(path)
        embeddings[variant] = embed_all(nets[variant], images)
        accuracy[variant] = per_episode_accuracy(nets[variant], embeddings[variant], episodes)
    metrics = summarize(accuracy, cfg)

    # What the generators make, seen by the reference embedding (source classes only), and whether
    # their drawings help at test time too: each novel exemplar joined by its synthetic drawings.
    reference, _ = load_siamese(args.reference)
    reference_embeddings = embed_all(reference, images)
    fixed = None
    for variant, vcfg in variants.items():
        if vcfg.synthetic == "none":
            continue
        with np.load(Path(args.synthetic) / vcfg.synthetic / "novel.npz") as novel:
            ex_idx, syn_images, syn_labels = novel["exemplar_index"], novel["images"], novel["labels"]
        metrics[variant].update(synthetic_measures(reference, dataset, reference_embeddings, ex_idx, syn_images,
                                                   syn_labels, cfg))
        if cfg.synthetic_support:
            if fixed is None:
                fixed = fixed_support_episodes(dataset, ex_idx, cfg.ways[0], cfg.n_episodes, cfg.seed)
            metrics[variant].update(synthetic_support(nets[variant], dataset, embeddings[variant], fixed, ex_idx,
                                                      syn_images, syn_labels, cfg.headline))

    reports = Path(args.reports)
    histories = {v: pd.read_csv(Path(args.classifiers) / v / "metrics.csv") for v in variants
                 if (Path(args.classifiers) / v / "metrics.csv").is_file()}
    sweeps = {f.stem: pd.read_csv(f) for f in sorted(Path(args.sweep).glob("*.csv"))}
    figures = [("curves.png", learning_curves(histories)),
               ("accuracy.png", accuracy_bars(metrics, [f"acc_{k}" for k in cfg.protocols]))]
    if sweeps:
        figures.append(("sweep.png", sweep_curve(sweeps, f"acc_{cfg.headline}")))
    # Everything is written aside first and logged from there; only then does it replace the outputs, so a
    # failure while logging leaves the last metrics and pictures as they were, beside a FAILED run.
    headline_files = {Path(args.headline) / f"{variant}.json": f"{variant}.json" for variant in metrics}
    with staged({reports / name: name for name, _ in figures} | {
            Path(args.plots) / "curves.csv": "curves.csv", Path(args.plots) / "accuracy.csv": "accuracy.csv",
            Path(args.plots) / "sweep.csv": "sweep.csv", Path(args.metrics): Path(args.metrics).name}
            | headline_files) as aside:
        for name, fig in figures:
            fig.savefig(aside[reports / name], dpi=100, format="png")
        curve_table(histories).to_csv(aside[Path(args.plots) / "curves.csv"], index=False, float_format="%.6g")
        accuracy_table(metrics, [f"acc_{k}" for k in cfg.protocols]).to_csv(
            aside[Path(args.plots) / "accuracy.csv"], index=False, float_format="%.6g")
        sweep_table(sweeps, f"acc_{cfg.headline}").to_csv(aside[Path(args.plots) / "sweep.csv"], index=False,
                                                          float_format="%.6g")
        write_json(aside[Path(args.metrics)], metrics)
        view = headline_view(metrics, cfg)
        for path in headline_files:
            write_json(aside[path], view[path.stem])
        if uri is not None:
            pictures = [aside[reports / name] for name, _ in figures]
            registry = (champion_registry(tracking_cfg, cfg, variants, accuracy, dataset, images, episodes)
                        if tracking_cfg.register else None)
            group = log_to_mlflow(uri, metrics, view, variants, ckpts, histories, args, params, cfg, pictures,
                                  sweeps, input_example(dataset), registry)
            print(f"MLflow: pipeline run {group} in experiment {tracking_cfg.experiment!r} at {uri}")
    for stale in set(Path(args.headline).glob("*.json")) - set(headline_files):  # a variant no longer in params
        stale.unlink()
    headline = f"acc_{cfg.headline}"
    for variant, m in metrics.items():
        print(f"{variant:>10}: {headline} {m[headline]:.3f} +/- {m[headline + '_ci95']:.3f}")


if __name__ == "__main__":
    main()
