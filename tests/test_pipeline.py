"""The whole pipeline: `dvc repro` of the smoke profile in a fresh git repo, on the real Omniglot zips,
then the metrics file, DVC's view of it, the runs read back from the MLflow store, and the trained `vae`
model used from image files as `oneshot-gda` does; `dvc exp run` (a temporary experiment, the switch to the
user's own class-folder data) on the tiny profile's finished workspace (tests/conftest.py), which is faster."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline import inference
from pipeline.classifiers.fewshot import embed_all, episode_scores
from pipeline.classifiers.network import load_siamese
from pipeline.config import load_params, section
from pipeline.data.episodes import Episodes
from pipeline.data.fewshot import FewShotSet
from pipeline.data.images import to_tensor
from pipeline.data.omniglot import ClassInfo, list_zip
from pipeline.evaluation import EvaluationConfig, build_episodes, per_episode_accuracy
from pipeline.export import OnnxModel
from pipeline.hardware import resolve_precision
from pipeline.profile import make_workspace
from pipeline.server import free_port
from tests.workspaces import copy_workspace, episode_folders, stage_env, wait_until_up

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROTOCOLS = ("acc_20way", "acc_5way", "acc_20way_within", "acc_seen")
VARIANTS = ["baseline", "classic", "vae", "gan", "oracle", "src_classic", "src_vae", "src_gan", "src_oracle"]


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, omniglot_dir: Path) -> tuple[Path, dict[str, str]]:
    workspace = make_workspace(ROOT, tmp_path_factory.mktemp("smoke") / "project", "smoke")
    env = stage_env(omniglot_dir)
    run([str(BIN / "dvc"), "repro"], workspace, env)
    return workspace, env


@pytest.mark.slow
def test_repro_writes_metrics_for_every_variant(smoke_run: tuple[Path, dict[str, str]]) -> None:
    workspace, _ = smoke_run
    metrics = json.loads((workspace / "reports" / "metrics.json").read_text())
    assert list(metrics) == VARIANTS
    for variant, m in metrics.items():
        for key in PROTOCOLS:
            assert 0.0 <= m[key] <= 1.0, (variant, key, m[key])
            assert 0.0 < m[f"{key}_ci95"] < 0.5
        if variant == "baseline":
            assert "delta_20way_vs_baseline" not in m
        else:
            assert m["delta_20way_vs_baseline"] == pytest.approx(m["acc_20way"] - metrics["baseline"]["acc_20way"],
                                                                 abs=2e-5)
            assert m["delta_20way_vs_baseline_ci95"] > 0
            assert m["delta_seen_vs_baseline"] == pytest.approx(m["acc_seen"] - metrics["baseline"]["acc_seen"],
                                                                abs=2e-5)
        for ref in ("classic", "src_classic"):  # evaluation.compare_with
            if variant not in (ref, "baseline"):
                assert m[f"delta_seen_vs_{ref}"] == pytest.approx(m["acc_seen"] - metrics[ref]["acc_seen"], abs=2e-5)
    # Chance is 1/20; even the quick profile's classifiers are far above it.
    assert min(m["acc_20way"] for m in metrics.values()) > 0.15
    for generator in ("vae", "gan"):
        m = metrics[generator]
        for key in ("synthetic_class_consistency", "real_class_consistency", "acc_20way_exemplar",
                    "acc_20way_prototype"):
            assert 0.0 <= m[key] <= 1.0, (generator, key)
        assert m["synthetic_diversity"] > 0, "the noise must change the drawings"
        assert m["delta_20way_prototype_vs_exemplar"] == pytest.approx(
            m["acc_20way_prototype"] - m["acc_20way_exemplar"], abs=2e-5)
        # The sweep: 0 is scored from `classic`, the variant's own count from the variant, the others trained.
        sweep = pd.read_csv(workspace / "reports" / "sweep" / f"{generator}.csv")
        assert list(sweep["n_synthetic"]) == [0, 4, 8]
        assert sweep["acc_20way"].iloc[0] == pytest.approx(metrics["classic"]["acc_20way"], abs=2e-5)
        assert sweep["acc_20way"].iloc[-1] == pytest.approx(m["acc_20way"], abs=2e-5)
    assert metrics["vae"]["real_class_consistency"] == metrics["gan"]["real_class_consistency"], \
        "both generators are measured on the same novel exemplars in the same reference embedding"
    for picture in ("samples_vae.png", "samples_gan.png", "curves.png", "accuracy.png", "sweep.png"):
        assert (workspace / "reports" / picture).stat().st_size > 1000
    assert (workspace / "models" / "reference" / "model.safetensors").is_file()
    # What each classifier trained on, as its checkpoint records it: the one-shot classes always, the
    # source classes for the src_* variants, never a calibration or novel class; its verification
    # threshold was set on the calibration classes.
    dataset = FewShotSet.load(workspace / "data" / "prepared" / "dataset.npz")
    roles = {r: len(dataset.classes(r)) for r in ("source", "calibration", "train")}
    assert roles["calibration"] >= 2
    for variant in VARIANTS:
        _, extra = load_siamese(workspace / "models" / "classifiers" / variant)
        expected = {"train": roles["train"]} | ({"source": roles["source"]} if variant.startswith("src_") else {})
        assert extra["classes_by_role"] == expected, variant
        assert 0.0 <= extra["verify"]["far"] <= 1.0
    for table in ("curves.csv", "accuracy.csv", "sweep.csv"):
        assert (workspace / "reports" / "plots" / table).stat().st_size > 100


@pytest.mark.slow
def test_the_quick_profile_passes_its_gate(smoke_run: tuple[Path, dict[str, str]]) -> None:
    """The run against the committed references/smoke.json and the smoke floors, as `make gate` does it."""
    workspace, env = smoke_run
    report = workspace / "reports" / "report.md"
    result = subprocess.run([sys.executable, "-m", "stages.gate", "--profile", "smoke", "--metrics",
                             str(workspace / "reports" / "metrics.json"), "--report", str(report)],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Gate: **PASS** against `references/smoke.json`" in report.read_text()
    shown = run([str(BIN / "dvc"), "plots", "show", "--json"], workspace, env).stdout
    assert not json.loads(shown).get("errors"), shown[:2000]


@pytest.mark.slow
def test_dvc_sees_metrics_and_reruns_only_what_changed(smoke_run: tuple[Path, dict[str, str]]) -> None:
    workspace, env = smoke_run
    # `dvc metrics show`: a row a variant, the headline only, each line readable in 160 columns
    table = run([str(BIN / "dvc"), "metrics", "show"], workspace, env).stdout.splitlines()
    assert [line.split()[0] for line in table[1:]] == [f"reports/headline/{v}.json" for v in sorted(VARIANTS)]
    assert table[0].split()[1:] == ["acc_20way", "acc_20way_within", "acc_5way", "acc_seen", "delta_vs_baseline",
                                    "delta_vs_classic", "delta_vs_src_classic"], table[0]
    assert max(len(line) for line in table) <= 160, "\n".join(table)
    metrics = json.loads((workspace / "reports" / "metrics.json").read_text())
    gan = json.loads((workspace / "reports" / "headline" / "gan.json").read_text())
    assert gan["acc_20way"] == metrics["gan"]["acc_20way"]
    assert gan["delta_vs_classic"] == metrics["gan"]["delta_20way_vs_classic"]
    # The workspace holds no other run's results: `dvc metrics diff` compares with nothing committed (the
    # project's own default-profile numbers stay behind), so every metric is new, none "unchanged".
    diff = json.loads(run([str(BIN / "dvc"), "metrics", "diff", "--json"], workspace, env).stdout)
    assert set(diff) == {f"reports/headline/{v}.json" for v in VARIANTS}
    assert all(change["old"] is None for per_file in diff.values() for change in per_file.values())
    status = run([str(BIN / "dvc"), "status", "--json"], workspace, env)
    assert json.loads(status.stdout) == {}, status.stdout

    params = (workspace / "params.yaml").read_text()
    try:
        (workspace / "params.yaml").write_text(params.replace("temperature: 1.5", "temperature: 1.0"))
        changed = set(json.loads(run([str(BIN / "dvc"), "status", "--json"], workspace, env).stdout))
    finally:
        (workspace / "params.yaml").write_text(params)
    assert "synthesize@vae" in changed
    assert not any(s.startswith(("prepare", "train_generator", "train_classifier@baseline")) for s in changed)

    # How many synthetic drawings the variants train on is recorded by synthesize: a new count
    # reruns the synthesis (and after it the generator variants), never a real-only classifier.
    fewer, swapped = re.subn(r"\bn_per_exemplar: \d+", "n_per_exemplar: 3", params)
    assert swapped == 1, "the workspace's params.yaml should set synthesis.n_per_exemplar once"
    try:
        (workspace / "params.yaml").write_text(fewer)
        changed = set(json.loads(run([str(BIN / "dvc"), "status", "--json"], workspace, env).stdout))
    finally:
        (workspace / "params.yaml").write_text(params)
    assert {"synthesize@vae", "synthesize@gan"} <= changed
    assert not any(s.startswith("train_classifier@") for s in changed), changed


@pytest.mark.slow
def test_mlflow_holds_one_pipeline_run_with_a_child_per_variant(smoke_run: tuple[Path, dict[str, str]]) -> None:
    workspace, _ = smoke_run
    store = workspace / "mlflow.db"
    assert store.is_file(), "the default tracking store is mlflow.db at the repository root"
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("omniglot-oneshot-smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    by_kind: dict[str, list] = {}
    for r in runs:
        by_kind.setdefault(r.data.tags.get("kind", ""), []).append(r)
        assert r.info.status == "FINISHED"
    (parent,) = by_kind["pipeline"]
    children = {r.data.tags["variant"]: r for r in by_kind["variant"]}
    assert set(children) == set(VARIANTS)
    metrics = json.loads((workspace / "reports" / "metrics.json").read_text())
    for variant, r in children.items():
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["run_group"] == parent.info.run_id
        assert len(r.data.tags["git_commit"]) == 40
        assert r.data.metrics["acc_20way"] == pytest.approx(metrics[variant]["acc_20way"])
        assert r.data.params["siamese.loss"]
        assert len(client.get_metric_history(r.info.run_id, "train/loss")) > 3, "learning curve"
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert "history" in artifacts
    assert children["oracle"].data.tags["ceiling"] == children["src_oracle"].data.tags["ceiling"] == "true"
    assert children["src_gan"].data.tags["train_on"] == "exemplars+synthetic+source"
    assert {v for v, r in children.items() if r.data.tags["source_classes"] == "true"} == \
        {v for v in VARIANTS if v.startswith("src_")}
    assert children["vae"].data.tags["generator"] == "vae"
    for generator in ("vae", "gan"):
        run_id = children[generator].info.run_id
        assert f"samples_{generator}.png" in {a.path for a in client.list_artifacts(run_id)}
        sweep = client.get_metric_history(run_id, "sweep/acc_20way")
        assert sorted(m.step for m in sweep) == [0, 4, 8]
    assert "sweep.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    # The pipeline run holds the headline itself, and the table as its description (the UI's run page)
    for variant in VARIANTS:
        headline = json.loads((workspace / "reports" / "headline" / f"{variant}.json").read_text())
        assert {k.split(".", 1)[1]: v for k, v in parent.data.metrics.items() if k.startswith(f"{variant}.")} \
            == pytest.approx(headline)
    note = parent.data.tags["mlflow.note.content"]
    assert "| variant | acc_20way |" in note and f"| gan | {metrics['gan']['acc_20way']:.3f} |" in note
    assert {r.data.tags["variant"] for r in by_kind["training"]} == set(children)
    generators = {r.data.tags["generator"]: r for r in by_kind["generator"]}
    assert set(generators) == {"vae", "gan"}
    assert len(client.get_metric_history(generators["vae"].info.run_id, "train/loss")) > 3
    assert len(client.get_metric_history(generators["gan"].info.run_id, "train/loss_critic")) > 3
    assert generators["gan"].data.metrics["perf/pairs_per_s"] > 0
    # The VAE's own params fix it to fp32; the GAN follows `auto` (bf16 only where the hardware has it)
    assert generators["vae"].data.params["trainer.precision_used"] == "32-true"
    assert generators["gan"].data.params["trainer.precision_used"] == resolve_precision("auto")
    assert len(by_kind["reference"]) == 1, "the reference embedding logs its own training run"
    # One tree per pipeline run: each classifier's training under its variant's run, the generators and the
    # reference embedding under the pipeline run itself
    for r in by_kind["training"]:
        assert r.data.tags["mlflow.parentRunId"] == children[r.data.tags["variant"]].info.run_id
        assert r.data.tags["run_group"] == parent.info.run_id
        assert children[r.data.tags["variant"]].data.tags["training_run_id"] == r.info.run_id
    for r in [*by_kind["generator"], *by_kind["reference"]]:
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id, r.info.run_name


def novel_png(archive: zipfile.ZipFile, members: dict[ClassInfo, list[str]], dataset: FewShotSet, image: int) -> bytes:
    """The original PNG file of one prepared novel-class drawing."""
    alphabet, character = str(dataset.class_names[dataset.labels[image]]).split("/")
    info = ClassInfo(alphabet, character, "images_evaluation")
    return archive.read(members[info][dataset.instances[image]])


def write_episode(folder: Path, episode: int, episodes: Episodes, dataset: FewShotSet, archive: zipfile.ZipFile,
                  members: dict[ClassInfo, list[str]]) -> tuple[Path, list[Path], list[str]]:
    """An episode as a user has it: support/<class>.png (one file per class), queries/NN.png; the true classes."""
    names = [str(dataset.class_names[c]).replace("/", "_") for c in dataset.labels[episodes.support[episode]]]
    (folder / "support").mkdir(parents=True)
    (folder / "queries").mkdir()
    for name, image in zip(names, episodes.support[episode], strict=True):
        (folder / "support" / f"{name}.png").write_bytes(novel_png(archive, members, dataset, image))
    queries = [folder / "queries" / f"{j:02d}.png" for j in range(episodes.n_way)]
    for path, image in zip(queries, episodes.query[episode], strict=True):
        path.write_bytes(novel_png(archive, members, dataset, image))
    return folder / "support", queries, names


@pytest.mark.slow
def test_predict_on_novel_drawings_equals_the_evaluation(smoke_run: tuple[Path, dict[str, str]], tmp_path: Path,
                                                         omniglot_zips: dict[str, Path]) -> None:
    """The `vae` model's predictions from image files, through the API and the command, are the evaluation's:
    the same episodes (support and queries of the evaluation split), the same accuracy, query by query, with
    the torch engine; the model.onnx its stage exported (what the command runs by default, in fp32 where
    evaluation embeds in bf16) agrees with it but for near ties."""
    workspace, env = smoke_run
    dataset = FewShotSet.load(workspace / "data" / "prepared" / "dataset.npz")
    cfg = section(load_params(workspace / "params.yaml"), EvaluationConfig, "evaluation")
    episodes = build_episodes(dataset, cfg)[cfg.headline]
    model_path = workspace / "models" / "classifiers" / "vae"
    net, _ = load_siamese(model_path)
    embeddings = embed_all(net, to_tensor(dataset.images))
    expected = per_episode_accuracy(net, embeddings, {cfg.headline: episodes})[cfg.headline]
    expected_choice = episode_scores(net, embeddings, episodes).argmax(-1)  # [E, N] support column of each query

    model, exported = inference.load_model(model_path, engine="torch"), inference.load_model(model_path)
    assert isinstance(exported, OnnxModel) and exported.identity == model.identity
    members = list_zip(omniglot_zips["images_evaluation"], "images_evaluation")
    accuracy, onnx_accuracy, agree = np.empty(len(episodes)), np.empty(len(episodes)), []
    onnx_predicted = []
    with zipfile.ZipFile(omniglot_zips["images_evaluation"]) as archive:
        folders = [write_episode(tmp_path / f"episode{e:03d}", e, episodes, dataset, archive, members)
                   for e in range(len(episodes))]
    for e, (support, queries, names) in enumerate(folders):
        bank = inference.enroll(model, inference.read_support(support, model.spec))
        predicted = inference.predict(model, bank, inference.read_images(queries, model.spec)).classes[:, 0]
        assert list(predicted) == [names[j] for j in expected_choice[e]], f"episode {e}"
        accuracy[e] = np.mean(predicted == np.asarray(names))
        bank = inference.enroll(exported, inference.read_support(support, exported.spec))
        onnx_predicted.append(inference.predict(exported, bank, inference.read_images(queries, exported.spec))
                              .classes[:, 0])
        onnx_accuracy[e] = np.mean(onnx_predicted[-1] == np.asarray(names))
        agree.append(np.mean(onnx_predicted[-1] == predicted))
    np.testing.assert_array_equal(accuracy, expected)
    metrics = json.loads((workspace / "reports" / "metrics.json").read_text())
    assert round(float(accuracy.mean()), 5) == metrics["vae"][f"acc_{cfg.headline}"]
    assert np.mean(agree) >= 0.97 and abs(onnx_accuracy.mean() - accuracy.mean()) < 0.01

    # The command, as a user runs it (on model.onnx), on the first episodes; and with the checkpoint.
    for e, (support, queries, names) in enumerate(folders[:3]):
        for engine, want in (("auto", list(onnx_predicted[e])), ("torch", [names[j] for j in expected_choice[e]])):
            done = run([sys.executable, "-m", "pipeline.cli", "predict", "--model", str(model_path), "--engine",
                        engine, "--support", str(support), "--query", str(queries[0].parent)], workspace, env)
            rows = list(csv.DictReader(io.StringIO(done.stdout)))
            assert [r["query"] for r in rows] == [str(q) for q in queries]
            assert [r["prediction"] for r in rows] == want, engine


@pytest.mark.slow
def test_trained_model_carries_its_verification_threshold_into_mlflow(smoke_run: tuple[Path, dict[str, str]],
                                                                      tmp_path: Path, omniglot_zips: dict[str, Path],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    workspace, env = smoke_run
    _, ckpt = load_siamese(workspace / "models" / "classifiers" / "vae")
    verify = ckpt["verify"]
    assert verify["target"] == "eer" and verify["n_pairs"] == 2 * 2000
    assert abs(verify["far"] - verify["frr"]) < 0.01 and 0 < verify["far"] < 0.5
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("omniglot-oneshot-smoke")
    assert experiment is not None
    (training,) = client.search_runs([experiment.experiment_id], "tags.kind = 'training' and tags.variant = 'vae'")
    assert training.data.metrics["verify/threshold"] == pytest.approx(verify["threshold"])
    child = client.search_runs([experiment.experiment_id], "tags.kind = 'variant' and tags.variant = 'vae'",
                               order_by=["attributes.start_time ASC"])[0]

    # From the pipeline's MLflow store (the workspace's mlflow.db): the same weights and threshold as model.pt.
    uri = f"runs:/{child.info.run_id}/vae"  # the model is named after its variant
    model = inference.load_model(workspace / "models" / "classifiers" / "vae" / "model.safetensors")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workspace / 'mlflow.db'}")
    logged = inference.load_model(uri)
    assert logged.identity == model.identity and logged.verify == model.verify
    with zipfile.ZipFile(omniglot_zips["images_evaluation"]) as archive:
        a, b = sorted(n for n in archive.namelist() if n.endswith(".png"))[:2]  # two drawers of one character
        (tmp_path / "a.png").write_bytes(archive.read(a))
        (tmp_path / "b.png").write_bytes(archive.read(b))
    # The command finds runs:/ in the project's store from the project folder, MLFLOW_TRACKING_URI unset.
    done = run([sys.executable, "-m", "pipeline.cli", "verify", "--model", uri, str(tmp_path / "a.png"),
                str(tmp_path / "b.png")], workspace, env)
    (row,) = list(csv.DictReader(io.StringIO(done.stdout)))
    assert float(row["threshold"]) == pytest.approx(verify["threshold"], abs=1e-6) and row["target"] == "eer"


# ---------------------------------------------------------------------------- the user's own data: kanji


KANJI_SETTINGS = ["data.source=folder", "data.subdir=kanji", "data.image_size=32", "data.roles.source=12",
                  "data.roles.calibration=1", "data.roles.train=4", "data.max_classes_per_group=20",
                  "tracking.experiment=kanji-oneshot-tiny"]
TINY_VARIANTS = ["baseline", "classic", "gan"]


@pytest.fixture(scope="module")
def kanji_exp(tiny_run: tuple[Path, dict[str, str]], kanji_zip: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict]:
    """The tiny profile (one generator, three variants: the whole pipeline in minutes) switched to the kanji
    zip by params alone, as a user does: `dvc exp run -S ...`. The quick kanji profile's accuracy is gated by
    `make smoke && make gate` (references/kanji-smoke.json); here, that the switch needs nothing else."""
    finished, env = tiny_run
    workspace = copy_workspace(finished, tmp_path_factory.mktemp("kanji") / "project")
    dvc_yaml = (workspace / "dvc.yaml").read_bytes()
    settings = [f"data.path={kanji_zip}", *KANJI_SETTINGS]
    run([str(BIN / "dvc"), "exp", "run", "--temp", "-n", "kanji", *(a for s in settings for a in ("-S", s))],
        workspace, env)
    assert (workspace / "dvc.yaml").read_bytes() == dvc_yaml, "switching the dataset changes no line of dvc.yaml"
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], workspace, env).stdout)
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for revision in exp.get("revs", []):
                if revision.get("name") == "kanji":
                    return workspace, env, revision
    raise AssertionError(f"experiment `kanji` not in dvc exp show: {json.dumps(shown)[:2000]}")


@pytest.mark.slow
def test_dvc_exp_run_switches_the_pipeline_to_a_class_folder_zip(
        kanji_exp: tuple[Path, dict[str, str], dict]) -> None:
    workspace, _, revision = kanji_exp
    data = revision["data"]
    params = data["params"]["params.yaml"]["data"]["data"]  # dvc exp show: file -> {"data": params}
    assert params["source"] == "folder" and params["image_size"] == 32
    metrics = {Path(path).stem: file["data"] for path, file in data["metrics"].items()}  # reports/headline/<v>.json
    assert sorted(metrics) == sorted(TINY_VARIANTS)
    for variant, m in metrics.items():
        assert 0.05 < m["acc_20way"] <= 1.0, (variant, m["acc_20way"])  # chance is 1/20
    assert metrics["classic"]["acc_20way"] > 0.3, "even 30 steps on printed kanji are far above chance"
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kanji-oneshot-tiny")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.dvc_exp = 'kanji' and tags.kind = 'variant'")
    assert {r.data.tags["variant"] for r in runs} == set(metrics)


@pytest.mark.slow
def test_temporary_dvc_experiment_logs_into_the_workspace_store(tiny_run: tuple[Path, dict[str, str]],
                                                                tmp_path: Path) -> None:
    """`dvc exp run --temp` runs in a copy under .dvc/tmp; its runs must still land in <repo root>/mlflow.db,
    and an edit of `evaluation` retrains nothing."""
    finished, env = tiny_run
    workspace = copy_workspace(finished, tmp_path / "project")
    done = run([str(BIN / "dvc"), "exp", "run", "--temp", "-n", "fewer-episodes", "-S", "evaluation.n_episodes=10"],
               workspace, env)
    ran = {line.split("'")[1] for line in done.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"check_params", "sweep@gan", "evaluate"}, ran  # the sweep scores `evaluation`'s episodes too
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("omniglot-oneshot-tiny")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.dvc_exp = 'fewer-episodes'")
    kinds = sorted(r.data.tags["kind"] for r in runs)
    assert kinds == ["pipeline"] + ["variant"] * len(TINY_VARIANTS), kinds  # one pipeline run, no training runs
    # The reused classifiers' training runs stay in the tree of the pipeline run that trained them
    first = {r.info.run_id for r in client.search_runs([experiment.experiment_id], "tags.kind = 'pipeline'")
             if r.data.tags["dvc_exp"] != "fewer-episodes"}
    assert len(first) == 1
    for variant_run in (r for r in runs if r.data.tags["kind"] == "variant"):
        training = client.get_run(variant_run.data.tags["training_run_id"])
        assert training.data.tags["run_group"] in first
    assert not list(workspace.glob(".dvc/tmp/exps/**/mlflow.db"))
    # `make exps`: the experiment beside the workspace, the changed param and each variant's acc_20way, no
    # dependency hash, no other metric, within 200 columns on a wide terminal
    shown = run(["make", "-s", "exps", "ARGS=--no-pager"], workspace, env | {"COLUMNS": "400"}).stdout.splitlines()
    header = next(line for line in shown if "Experiment" in line).split()
    assert header == ["Experiment", *(f"reports/headline/{v}.json:acc_20way" for v in sorted(TINY_VARIANTS)),
                      "evaluation.n_episodes"], header
    assert any("[fewer-episodes]" in line for line in shown) and not any(".dir" in line for line in shown)
    assert max(len(line.rstrip()) for line in shown) <= 200, "\n".join(shown)


# ---------------------------------------------------------------------------- the model a user takes away


TINY_MODEL = "omniglot-oneshot-tiny"  # the tiny profile's registered model: its experiment's name


def request_frame(folder: Path) -> tuple[pd.DataFrame, list[Path]]:
    """An episode folder as the registered model's input: support rows labelled, then the queries in file order."""
    from pipeline import serving

    support = sorted((folder / "support").glob("*/*.png"))
    queries = inference.list_queries([folder / "queries"])
    rows = [(serving.encode_image(p), p.parent.name) for p in support]
    rows += [(serving.encode_image(q), "") for q in queries]
    return pd.DataFrame(rows, columns=["image", "label"]), queries


def test_the_best_one_shot_variant_is_registered_as_champion(tiny_run: tuple[Path, dict[str, str]]) -> None:
    workspace, _ = tiny_run
    metrics = json.loads((workspace / "reports" / "metrics.json").read_text())
    best = max((v for v in metrics if v != "oracle"), key=lambda v: metrics[v]["acc_20way"])
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(TINY_MODEL, "champion")
    assert champion.tags["variant"] == best and champion.tags["champion_check"].endswith("promoted")
    assert float(champion.tags["acc_20way"]) == pytest.approx(metrics[best]["acc_20way"], abs=1e-4)
    assert champion.run_id is not None
    variant_run = client.get_run(champion.run_id)  # the version links the variant's run of the pipeline run
    assert variant_run.data.tags["variant"] == best and variant_run.data.tags["kind"] == "variant"
    logged = {m.name for m in client.search_logged_models([variant_run.info.experiment_id])}
    assert set(metrics) <= logged, "every variant's model is logged under its own name"


@pytest.mark.slow
def test_the_champion_serves_on_loopback_as_oneshot_predict_answers(tiny_run: tuple[Path, dict[str, str]],
                                                                    tmp_path: Path,
                                                                    omniglot_zips: dict[str, Path]) -> None:
    """`mlflow models serve -m models:/...@champion --env-manager local`: the REST answer is `oneshot-gda predict`'s."""
    workspace, env = tiny_run
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{workspace / 'mlflow.db'}"}
    uri = f"models:/{TINY_MODEL}@champion"
    (folder,) = episode_folders(tmp_path, omniglot_zips["images_evaluation"], 1, 20, seed=7)
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", server, tmp_path / "serve.log", 180, path="/ping")
        frame, queries = request_frame(folder)
        body = json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            served = json.loads(response.read())["predictions"]
        bad = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(
            {"dataframe_split": frame.assign(label="x").to_dict(orient="split", index=False)}).encode(),
            {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=60)
        assert refused.value.code == 400 and b"no queries" in refused.value.read()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    done = run([str(BIN / "oneshot-gda"), "predict", "--model", uri, "--support", str(folder / "support"),
                "--query", str(folder / "queries")], workspace, env)
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["query"] for r in rows] == [str(q) for q in queries]
    assert [s["prediction"] for s in served] == [r["prediction"] for r in rows]
    np.testing.assert_allclose([s["score"] for s in served], [float(r["score"]) for r in rows], atol=1e-5)
    assert [s["row"] for s in served] == list(range(20, 40))
    assert np.mean([r["prediction"] == Path(r["query"]).stem for r in rows]) > 0.3  # a trained model, not chance


@pytest.mark.slow
def test_the_champion_loads_in_an_environment_without_the_checkout(tiny_run: tuple[Path, dict[str, str]],
                                                                   tmp_path: Path,
                                                                   omniglot_zips: dict[str, Path]) -> None:
    """A fresh venv that has the locked packages (the project's, by a .pth line) but not `pipeline`: the model
    brings its own code, and predicts the labels `oneshot-gda predict` gives on 20 Omniglot episodes."""
    import sysconfig

    workspace, env = tiny_run
    store = f"sqlite:///{workspace / 'mlflow.db'}"
    uri = f"models:/{TINY_MODEL}@champion"
    folders = episode_folders(tmp_path / "episodes", omniglot_zips["images_evaluation"], 20, 5, seed=11)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # A path line only: the project venv's own .pth files (the editable install of `pipeline`) are not read.
    (Path(site) / "locked-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = tmp_path / "predict.py"
    script.write_text(f'''
import importlib.util, json, sys
assert importlib.util.find_spec("pipeline") is None, "the checkout is importable"
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model({uri!r})
frames = json.load(open(sys.argv[1]))
out = [model.predict(pd.DataFrame(f, columns=["image", "label"]))["prediction"].tolist() for f in frames]
print(json.dumps({{"labels": out, "code": sys.modules["pipeline"].__file__}}))
''')
    frames = [request_frame(f)[0].values.tolist() for f in folders]
    (tmp_path / "frames.json").write_text(json.dumps(frames))
    clean = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(python), str(script), str(tmp_path / "frames.json")], cwd=tmp_path,
                          env={**clean, "MLFLOW_TRACKING_URI": store, "PATH": f"{venv / 'bin'}:/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["code"].startswith(str(ROOT)), "pipeline came from the checkout, not from the model"
    # What `oneshot-gda predict --model models:/...@champion --support ... --query ...` computes, in process.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store)
        model = inference.load_model(uri)
    expected = []
    for folder in folders:
        bank = inference.enroll(model, inference.read_support(folder / "support", model.spec))
        queries = inference.list_queries([folder / "queries"])
        found = inference.predict(model, bank, inference.read_images(queries, model.spec))
        expected.append(found.classes[:, 0].tolist())
    assert result["labels"] == expected


def test_every_run_names_params_alike_and_records_its_data(tiny_run: tuple[Path, dict[str, str]]) -> None:
    """One naming scheme (params.yaml paths with dots) on training and variant runs, no constant `epoch` metric,
    system metrics on the trainings, and the prepared data as a dataset input of every run."""
    workspace, _ = tiny_run
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("omniglot-oneshot-tiny")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    kinds = {r.data.tags["kind"] for r in runs}
    assert kinds == {"pipeline", "variant", "training", "generator", "reference"}, kinds
    digest = None
    for r in runs:
        assert not any("/" in k for k in r.data.params), (r.info.run_name, sorted(r.data.params)[:5])
        assert "epoch" not in r.data.metrics, r.info.run_name
        assert r.inputs is not None
        (found,) = r.inputs.dataset_inputs
        assert found.dataset.name == "omniglot" and found.dataset.source_type == "local"
        digest = digest or found.dataset.digest
        assert found.dataset.digest == digest, "one prepared dataset, one digest"
        context = {t.key: t.value for t in found.tags}["mlflow.data.context"]
        assert context == ("evaluation" if r.data.tags["kind"] in ("pipeline", "variant") else "training")
        if r.data.tags["kind"] in ("training", "generator", "reference"):
            assert any(k.startswith("system/cpu_utilization") for k in r.data.metrics), r.info.run_name
    # Each training logs the precision `auto` gave on this machine (the tiny profile trains no VAE, whose own
    # params fix it to fp32).
    auto = resolve_precision("auto")
    used = {(r.data.tags["kind"], r.data.tags.get("generator", r.data.tags.get("variant"))):
            r.data.params["trainer.precision_used"] for r in runs
            if r.data.tags["kind"] in ("training", "generator", "reference")}
    assert ("generator", "vae") not in used, "the tiny profile trains the GAN only"
    assert set(used.values()) == {auto} and ("generator", "gan") in used and ("reference", None) in used, used
    gan_training = next(r for r in runs if r.data.tags["kind"] == "generator")
    gan_variant = next(r for r in runs if r.data.tags["kind"] == "variant" and r.data.tags["variant"] == "gan")
    assert gan_training.data.params["generator.gan.widths"] == gan_variant.data.params["generator.gan.widths"]
    assert gan_training.data.params["generator.gan.widths"].startswith("[")
    trained, scored = (next(r for r in runs if r.data.tags["kind"] == kind and r.data.tags.get("variant") == "classic")
                       for kind in ("training", "variant"))
    assert trained.data.params["siamese.lr"] == scored.data.params["siamese.lr"]
