"""The layout keeps its promises: each stage's `deps` in dvc.yaml are exactly the pipeline modules it imports
(transitively), so DVC reruns a stage when code it runs changes, and no stage builds episodes, loaders or Trainers."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Dotted names of the `pipeline` modules (and the names imported from them) that `path` imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "pipeline")
    return names


def module_file(dotted: str) -> Path | None:
    base = ROOT.joinpath(*dotted.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def closure(script: Path) -> set[str]:
    """Every pipeline module file `script` loads when it runs, with the packages that hold them, relative to ROOT."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for dotted in imported_modules(todo.pop()):
            parts = dotted.split(".")
            for k in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
                found = module_file(".".join(parts[:k]))
                if found is not None and found not in seen:
                    seen.add(found)
                    todo.append(found)
    return {str(p.relative_to(ROOT)) for p in seen} - {"pipeline/__init__.py"}


def stage_defs() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: d.get("do", d) for name, d in stages.items()}


@pytest.mark.parametrize("stage", sorted(stage_defs()))
def test_stage_deps_are_exactly_the_modules_it_imports(stage: str) -> None:
    definition = stage_defs()[stage]
    script = ROOT / "stages" / f"{stage}.py"
    assert f"python -m stages.{stage} " in definition["cmd"]
    listed = {d for d in definition["deps"] if isinstance(d, str) and d.startswith(("pipeline/", "stages/"))}
    expected = closure(script) | {f"stages/{stage}.py"}
    assert sorted(expected - listed) == [], f"dvc.yaml `{stage}` lacks deps it imports"
    assert sorted(listed - expected) == [], f"dvc.yaml `{stage}` lists deps it does not import"


def test_the_closure_follows_imports_of_imports(tmp_path: Path) -> None:
    """The checker itself: evaluate imports pipeline.evaluation, which imports the classifiers' network."""
    assert {"pipeline/evaluation.py", "pipeline/classifiers/network.py", "pipeline/classifiers/__init__.py",
            "pipeline/data/episodes.py"} <= closure(ROOT / "stages" / "evaluate.py")
    assert "pipeline/generators/gan.py" not in closure(ROOT / "stages" / "train_classifier.py")


BUILDS = {"DataLoader", "Trainer", "sample_episodes", "PairBatches", "SameClassPairs", "seed_everything"}


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "stages").glob("*.py") if p.name != "__init__.py"))
def test_stages_stay_thin(script: str) -> None:
    """Episode building, batch loaders and Trainer set-up live in pipeline/, not in a stage (STYLE 1)."""
    tree = ast.parse((ROOT / "stages" / script).read_text())
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not used & BUILDS, f"stages/{script} builds {sorted(used & BUILDS)} itself"


def test_every_variant_names_its_synthetic_input() -> None:
    """dvc.yaml reads `variants.<name>.synthetic` for the stage's input folder: a variant without it stops
    `dvc repro` with "Could not find 'item.synthetic'", in params.yaml and in every profile."""
    files = [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("*.yaml"))]
    for path in files:
        variants = (yaml.safe_load(path.read_text()) or {}).get("variants") or {}
        for name, raw in variants.items():
            assert "synthetic" in raw, f"{path.name}: variants.{name} lacks `synthetic`"


@pytest.mark.parametrize("profile", [None, *sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml"))])
def test_params_and_every_profile_pass_the_up_front_check(profile: str | None) -> None:
    """What `check_params` runs first in `dvc repro`: every section, strictly (no key left to a code default),
    and the names that tie sections together, for params.yaml and each profile laid over it."""
    from pipeline.config import load_params
    from pipeline.profile import profile_params
    from pipeline.schema import SECTIONS, check_params

    params = load_params(ROOT / "params.yaml") if profile is None else profile_params(ROOT / "params.yaml", profile)
    checked = check_params(params)
    assert set(SECTIONS) - {"generator", "variants"} <= set(checked)
    assert {f"variants.{v}" for v in params["variants"]} <= set(checked)


def test_every_stage_waits_for_the_params_check_and_keeps_what_cannot_be_restored() -> None:
    """Each stage depends on `check_params`' stamp, so a bad param stops DVC before it deletes any stage's
    outputs; outputs DVC does not cache are `persist` (DVC never deletes them; the stage replaces them whole)."""
    stages = stage_defs()
    assert "params.yaml" in stages["check_params"]["deps"] and "params" not in stages["check_params"]
    for name, definition in stages.items():
        if name != "check_params":
            assert "data/params.ok" in definition["deps"], f"dvc.yaml `{name}` does not wait for check_params"
        for kind in ("outs", "metrics", "plots"):
            for out in definition.get(kind, []):
                if isinstance(out, dict):
                    ((path, flags),) = out.items()
                    if flags and flags.get("cache") is False:
                        assert flags.get("persist") is True, f"dvc.yaml `{name}`: {path} is not persist"


def test_a_workspace_leaves_the_projects_results_behind(tmp_path: Path) -> None:
    """A profile's workspace makes its own results: the project's lock file and reports (the default profile's
    numbers) are not copied, so `dvc metrics diff` there never compares with them; the code and params are."""
    from pipeline.profile import make_workspace

    ws = make_workspace(ROOT, tmp_path / "ws", "tiny")
    assert (ROOT / "reports" / "metrics.json").is_file() and (ROOT / "dvc.lock").is_file()
    assert not (ws / "dvc.lock").exists() and not (ws / "reports" / "metrics.json").exists()
    assert not list((ws / "reports").glob("headline/*.json"))
    assert (ws / "reports" / ".gitignore").is_file()  # not a result: it keeps DVC's cached outputs out of git
    assert (ws / "dvc.yaml").read_text() == (ROOT / "dvc.yaml").read_text()
    assert (ws / "pipeline" / "evaluation.py").is_file() and "profiles/tiny.yaml" in (ws / "params.yaml").read_text()


def test_every_dvc_artifact_is_a_stage_output_of_the_default_profile() -> None:
    """dvc.yaml's `artifacts:` (DVC's model registry) name each default variant's classifier and each generator."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    artifacts = spec["artifacts"]
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) for name in artifacts), list(artifacts)
    paths = {a["path"] for a in artifacts.values()}
    assert paths == {f"models/classifiers/{v}" for v in params["variants"]} | {
        f"models/generators/{g}" for g in params["generator"]["enabled"]}
    assert all(a["type"] == "model" and a["desc"] for a in artifacts.values())


def test_prepare_reads_every_data_key_but_the_download_source() -> None:
    """`dvc exp show` lists the params stages read: prepare lists each `data` key that changes the prepared set."""
    import dataclasses

    from pipeline.data.prepare import DataConfig

    prepare = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["prepare"]
    assert prepare["params"] == [f"data.{f.name}" for f in dataclasses.fields(DataConfig) if f.name != "download"]


@pytest.mark.parametrize("stage", ["check_params", "synthesize", "evaluate", "prepare", "gate"])
def test_stages_that_do_not_train_load_no_lightning(stage: str) -> None:
    """Only the training stages pay for Lightning's import (about 5 s a process on 2 cores): checking params,
    drawing from a trained generator and scoring episodes start without it."""
    code = (f"import sys; import stages.{stage}; "
            "assert 'pytorch_lightning' not in sys.modules and 'lightning' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
