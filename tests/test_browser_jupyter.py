"""The Jupyter integration in a real JupyterLab and headless Chromium: the launcher tiles, the
MLflow UI through Jupyter's proxy (experiments, a run's metrics chart, the compare view of two
runs), the workbench notebook tile, and A/B chat in the compare tab with an overlay on each side;
the A/B turns are then found as MLflow traces.

JupyterLab serves the folder of the test session's MLflow store, so the MLflow tile (a second
server over the same SQLite store) shows the runs the tests made."""

import json
import os
import shutil
import time

import mlflow
import pytest

from conftest import REPO
from test_browser import SHOTS, chromium_page, run_all_cells, running_lab
from workbench import grounding, tracing

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab_on_store(mlflow_server, demo_dir, tmp_path_factory):
    root = mlflow_server.root  # its mlruns/ is the store every test logs to
    shutil.copytree(REPO / "examples", f"{root}/examples", dirs_exist_ok=True)
    with running_lab(root, tmp_path_factory.mktemp("jupyter-integration")) as (base, token):
        yield base, token, root


@pytest.fixture
def page(lab_on_store):
    with chromium_page() as page:
        page.set_default_timeout(60_000)
        yield page


def frame_with(page, part: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for frame in page.frames:
            if part in frame.url:
                return frame
        page.wait_for_timeout(250)
    raise AssertionError(f"no frame at {part}: {[f.url for f in page.frames]}")


def test_tiles_mlflow_tab_workbench_notebook_and_ab_chat(lab_on_store, page, finished, mlflow_server):
    base, token, root = lab_on_store
    client = mlflow.MlflowClient(mlflow_server.uri)
    run = client.get_run(finished.run_id)
    experiment_id = run.info.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name="second run for the compare view") as other:
        for step, value in enumerate((2.0, 1.5, 1.2)):
            mlflow.log_metric("loss", value, step=step)

    # 1. The launcher has both tiles.
    page.goto(f"{base}/lab?token={token}")
    page.wait_for_selector(".jp-Launcher", timeout=90_000)
    for title in ("MLflow", "InternVL Workbench"):
        page.wait_for_selector(f".jp-LauncherCard[title^='{title}']")  # (a new-tab tile ends in [↗])

    # 2. The MLflow tile: the UI in a JupyterLab tab, through Jupyter's proxy.
    page.click(".jp-LauncherCard[title='MLflow']")
    page.wait_for_selector("iframe[src*='mlflow']", timeout=60_000)
    frame = frame_with(page, "/mlflow/")
    experiment_name = client.get_experiment(experiment_id).name
    frame.wait_for_selector(f"text={experiment_name}", timeout=150_000)  # the server starts on first use
    frame.goto(f"{base}/mlflow/#/experiments/{experiment_id}/runs/{finished.run_id}/model-metrics")
    frame.wait_for_selector("text=eval_grounding_acc50")  # a metric chart of the run
    frame.wait_for_selector("svg")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "mlflow-run-in-lab.png"))
    frame.goto(f"{base}/mlflow/#/experiments/{experiment_id}/runs/{finished.run_id}/artifacts")
    frame.wait_for_selector("text=checkpoints")  # the run's artifacts: each checkpoint's adapter
    frame.goto(f"{base}/mlflow/#/models")
    frame.wait_for_selector("text=test-demo-lora")  # the model registry: the fine-tune's registered model
    runs = json.dumps([finished.run_id, other.info.run_id])
    frame.goto(f"{base}/mlflow/#/compare-runs?runs={runs}&experiments={json.dumps([experiment_id])}")
    frame.wait_for_selector("text=Comparing 2 Runs")
    page.screenshot(path=str(SHOTS / "mlflow-compare-in-lab.png"))

    # 3. The workbench tile: a notebook with the UI ready, opened in JupyterLab.
    page.goto(f"{base}/lab?reset&token={token}")  # a fresh workspace: the launcher again
    page.wait_for_selector(".jp-Launcher", timeout=90_000)
    with page.context.expect_page() as opened:  # the tile opens its own browser tab
        page.click(".jp-LauncherCard[title^='InternVL Workbench']")
    page = opened.value
    page.set_default_timeout(60_000)
    page.set_viewport_size({"width": 1400, "height": 1100})
    page.wait_for_selector(".lm-TabBar-tab:has-text('InternVL Workbench.ipynb')", timeout=90_000)
    assert os.path.exists(os.path.join(root, "InternVL Workbench.ipynb"))
    run_all_cells(page)
    page.wait_for_selector(".wb-app", timeout=120_000)

    # 4. A/B chat in the Compare tab: the base model against the fine-tune's final adapter.
    tracing.enable()  # the kernel shares the test home: its chat turns are traced from now on
    try:
        app = page.wait_for_selector(".wb-app")
        app.query_selector(".lm-TabBar-tab:has-text('Compare')").click()
        panel = page.wait_for_selector(".wb-compare")
        page.wait_for_selector(f".wb-compare-table:has-text('{finished.id}')", timeout=60_000)
        panel.query_selector(".wb-compare-pick-a select").select_option(label="base model of B")
        panel.query_selector(".wb-compare-pick-b select").select_option(label=f"{finished.id} · final")
        panel.query_selector("button.wb-compare-load").click()
        page.wait_for_selector(".wb-compare-memory:has-text('shared by both sides')", timeout=120_000)
        panel.query_selector(".wb-compare-question input").fill(grounding.question("the red circle"))
        panel.query_selector(".wb-compare-image input").fill("examples/shapes.png")
        panel.query_selector("button.wb-compare-ask").click()
        page.wait_for_selector(".wb-compare-a.wb-compare-done .wb-overlay .wb-box", timeout=120_000)
        side_b = page.wait_for_selector(".wb-compare-b.wb-compare-done", timeout=120_000)
        assert "the red circle" in panel.query_selector(".wb-compare-a").inner_text()
        assert side_b.inner_text().split("final", 1)[1].strip(), "B answered too"
        if side_b.query_selector(".wb-ref"):
            side_b.wait_for_selector(".wb-overlay .wb-box")  # a grounded answer gets its own overlay
        link = panel.query_selector(".wb-compare-link a").get_attribute("href")
        assert link.startswith("/mlflow/#/experiments/") and finished.run_id in link
        panel.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "ab-chat.png"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = mlflow.search_traces(locations=[client.get_experiment_by_name(tracing.EXPERIMENT).experiment_id],
                                         return_type="list", filter_string="tags.session = 'compare-B'") \
                if client.get_experiment_by_name(tracing.EXPERIMENT) else []
            if found:
                break
            time.sleep(1)
        assert found and found[0].data.spans[0].attributes["adapter"].endswith("final")
    finally:
        tracing.disable()
