"""What a person sees in the MLflow UI: `mlflow server` on the tiny profile's finished store, opened in headless
Chromium (Debian's, installed by .ci/system-packages.sh) through Playwright, as a user opens it.

Screenshots go to $SCREENSHOT_DIR (default build/screenshots/ in the checkout), which CI keeps as artifacts.
$MLFLOW_UI_WORKSPACE names another finished workspace (its mlflow.db, experiment and variants from its params.yaml)
to check instead of the tiny run; the README's pictures come from the default profile's:

    MLFLOW_UI_WORKSPACE=build/stages-default SCREENSHOT_DIR=docs pytest tests/test_browser.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from playwright.sync_api import Browser, Page, sync_playwright

from pipeline import tracking
from pipeline.server import free_port
from tests.workspaces import stage_env, wait_until_up

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("SCREENSHOT_DIR", ROOT / "build" / "screenshots"))
WORKSPACE = os.environ.get("MLFLOW_UI_WORKSPACE")

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no Chromium: run .ci/system-packages.sh")]


@pytest.fixture(scope="module")
def finished(request: pytest.FixtureRequest, omniglot_dir: Path) -> tuple[Path, dict[str, str]]:
    """The finished workspace whose store the UI shows (the tiny run's unless $MLFLOW_UI_WORKSPACE), and the
    environment of its commands."""
    if WORKSPACE is None:
        return request.getfixturevalue("tiny_run")
    return Path(WORKSPACE).resolve(), stage_env(omniglot_dir)


@pytest.fixture(scope="module")
def params(finished: tuple[Path, dict[str, str]]) -> dict:
    return yaml.safe_load((finished[0] / "params.yaml").read_text())


@pytest.fixture(scope="module")
def ui(finished: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on loopback over the finished run's store: the UI's address."""
    workspace, env = finished
    port = free_port()
    log_path = tmp_path_factory.mktemp("ui") / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                                   f"sqlite:///{workspace / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
                                   "--workers", "1"], cwd=workspace, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url, server, log_path, 120)
            yield url
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def latest_pipeline_run(ui: str, params: dict) -> tuple[str, Run, list[Run]]:
    client = MlflowClient(ui)
    experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
    assert experiment is not None
    (pipeline,) = client.search_runs([experiment.experiment_id], "tags.kind = 'pipeline'", max_results=1,
                                     order_by=["attributes.start_time DESC"])
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.kind = 'variant' and tags.run_group = '{pipeline.info.run_id}'")
    return experiment.experiment_id, pipeline, children


def page_of(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(url)
    close = page.get_by_role("button", name=re.compile("close", re.I))  # MLflow 3's assistant panel, if open
    page.wait_for_timeout(1500)
    if close.count():
        close.first.click()
    return page


def test_the_runs_table_shows_the_tree_and_the_headline(ui: str, params: dict, browser: Browser) -> None:
    """The view the evaluate stage shares: each variant's acc_20way in a column, no column picked by hand, and
    the variant runs (with the generators' and the reference's trainings) under their pipeline run."""
    experiment_id, pipeline, children = latest_pipeline_run(ui, params)
    view = MlflowClient(ui).get_experiment(experiment_id).tags[f"mlflow.sharedViewState.{tracking.HEADLINE_VIEW}"]
    assert "metrics.`acc_20way`" in json.loads(view)["selectedColumns"]
    page = page_of(browser, f"{ui}/#/experiments/{experiment_id}/runs?viewStateShareKey={tracking.HEADLINE_VIEW}")
    grid = page.get_by_role("grid")
    grid.get_by_role("columnheader", name="acc_20way").first.wait_for(timeout=30000)
    headers = grid.get_by_role("columnheader").all_inner_texts()
    assert "acc_20way" in headers and "variant" in headers, headers
    row = grid.get_by_role("row").filter(has_text=pipeline.info.run_name).first
    row.get_by_role("button").first.click()  # expand the pipeline run
    # The grid draws the pinned name column and the others as rows of their own: a variant's values are the
    # row that ends with its `variant` tag.
    deadline = time.monotonic() + 20
    while True:
        rows = [" ".join(r.split()) for r in grid.get_by_role("row").all_inner_texts()]
        if any(r.endswith(" classic") for r in rows) or time.monotonic() > deadline:
            break
        page.wait_for_timeout(250)
    for child in children:
        variant = child.data.tags["variant"]
        (line,) = [r for r in rows if re.search(rf"\s{variant}$", r)]
        numbers = [float(n) for n in re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", line)]
        assert any(abs(n - child.data.metrics["acc_20way"]) < 5e-4 for n in numbers), (variant, line)
        assert any(r.startswith("#") and re.search(rf"\s{variant}\s", r) for r in rows), "its name, in the tree"
    assert {c.data.tags["variant"] for c in children} == set(params["variants"])
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "mlflow-runs.png"))
    page.close()


def test_the_compare_view_shows_each_variants_headline(ui: str, params: dict, browser: Browser) -> None:
    experiment_id, _, children = latest_pipeline_run(ui, params)
    ids = json.dumps([c.info.run_id for c in children]).replace(" ", "")
    page = page_of(browser, f"{ui}/#/compare-runs?runs={ids}&experiments=[\"{experiment_id}\"]")
    metric = page.get_by_text("acc_20way", exact=True).last
    metric.wait_for(timeout=20000)  # the Metrics table: a row per metric, a column per run
    page.wait_for_timeout(2000)  # the plots above it finish drawing
    body = " ".join(page.inner_text("body").split())
    for child in children:
        assert child.info.run_name in body
    # A virtualised grid: the names in one, the values in another, a row's cells at the same height.
    cells = metric.evaluate("""name => {
        const top = name.closest('[style*="top"]').style.top;
        return [...document.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer')]
            .map(grid => [...grid.children].filter(c => c.style.top === top).map(c => c.innerText).join(' '));
    }""")
    row = " ".join(cells)
    numbers = [float(n) for n in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", row)]
    for child in children:  # shown to 3 significant digits
        assert any(abs(n - child.data.metrics["acc_20way"]) < 5e-3 for n in numbers), (child.info.run_name, row)
    metric.scroll_into_view_if_needed()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "mlflow-compare.png"))
    page.close()
