"""One fixture isolates everything: WORKBENCH_HOME points at a fresh folder for the whole run."""

from __future__ import annotations

import http.server
import json
import shutil
import os
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "shapes.png"


@pytest.fixture(scope="session", autouse=True)
def workbench_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("workbench-home")
    old = {k: os.environ.get(k) for k in ("WORKBENCH_HOME", "HF_HUB_OFFLINE")}
    os.environ["WORKBENCH_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a hub
    from workbench import tracing

    tracing.disable()  # kept in the test home: chat turns are traced only where a test asks (test_tracing.py)
    yield home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_dir(workbench_home):
    from workbench.tiny import ensure_built

    return ensure_built()


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """The tiny model loaded once for the whole run (tests that unload use their own session)."""
    import workbench.session as S

    session = S.load("tiny", name="shared-tiny")
    yield session
    if "shared-tiny" in S.sessions():
        S.unload("shared-tiny")


@pytest.fixture(scope="session")
def http_server(tmp_path_factory):
    """A real HTTP server on 127.0.0.1 serving a folder (images, a non-image, a big file)."""
    root = tmp_path_factory.mktemp("www")
    (root / "shapes.png").write_bytes(EXAMPLE.read_bytes())
    (root / "notes.txt").write_text("not an image")
    (root / "big.png").write_bytes(EXAMPLE.read_bytes() + b"\0" * 3_000_000)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="session")
def demo_dir(tiny_dir):
    """The demo model (committed in workbench/assets/demo-model): grounds the example image."""
    from workbench import demo

    return demo.ensure_built()


# What the demo model answers about the example image (640x480, so its shapes are stretched a little
# on the way to one 448-px tile), asked the way it was trained: InternVL's grounding prompt.
QUESTION = "Please provide the bounding box coordinate of the region this sentence describes: <ref>the red circle</ref>"
ANSWER = "<ref>the red circle</ref><box>[[127, 250, 444, 585]]</box>"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, workbench_home):
    """A real MLflow tracking server (SQLite + artifact folder) for the whole run; every process
    started by the tests logs to it through MLFLOW_TRACKING_URI."""
    from workbench import tracking

    root = tmp_path_factory.mktemp("mlflow-root")
    server = tracking.local_server(root)
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = server.uri
    yield server
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old
    server.stop()


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """The example grounding data as a train and a validation file."""
    folder = tmp_path_factory.mktemp("sft-data")
    shutil.copy(EXAMPLE, folder / "shapes.png")
    rows = [json.loads(line) for line in (REPO / "examples" / "shapes-grounding.jsonl").read_text().splitlines()]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    return folder


@pytest.fixture(scope="session")
def finished(dataset, demo_dir, mlflow_server):
    """A short LoRA fine-tune of the demo model, run as a background job to the end."""
    from workbench import jobs

    job = jobs.launch(REPO / "recipes" / "demo-lora.yaml", dataset=[str(dataset / "train.jsonl")],
                      val_dataset=[str(dataset / "val.jsonl")], max_steps=4, save_steps=2, eval_samples=2,
                      register_as="test-demo-lora")
    assert job.wait(600) == "finished", job.log_tail()
    return job
