"""The demo model: trained on first use from the tiny model, it grounds the example image."""

import pytest

import workbench
from workbench import catalog, demo, grounding


def test_default_model_is_the_demo(demo_dir):
    assert catalog.DEFAULT_MODEL == "demo"
    session = workbench.load(name="demo-default")
    try:
        assert session.path == demo_dir and session.spec.name == "demo" and session.max_tiles == 1
        conv = workbench.Conversation(session, log=False)
        for question, answer in demo.examples():
            assert conv.ask(question, [demo.EXAMPLE_IMAGE], max_new_tokens=60) == answer, question
            conv.clear()
        # The boxes it learned are the shapes' real pixel boxes.
        for label, box in demo.OBJECTS.items():
            conv.clear()
            ref = grounding.parse(conv.ask(f"Find {label}.", [demo.EXAMPLE_IMAGE])).refs[0]
            px = grounding.convert(ref.boxes[0], "norm_1000", "real", 640, 480)
            assert ref.label == label and max(abs(a - b) for a, b in zip(px, box)) <= 1
    finally:
        workbench.unload("demo-default")


def test_demo_build_leaves_no_temp_folders(demo_dir):
    assert demo.ensure_built() == demo_dir
    assert not [p for p in demo_dir.parent.iterdir() if p.name.startswith(".demo")]


@pytest.mark.slow
def test_new_concept_notebook_teaches_pink_and_the_rise_is_in_mlflow(mlflow_server):
    """notebooks/new-concept.ipynb top to bottom in a real kernel: a CPU LoRA job teaches the
    synthetic-data demo model "pink"; Acc@0.5 on held-out pink questions rises per checkpoint (as
    logged to MLflow); the merged model answers in the chat panel. Fixed seeds; thresholds well
    below what was measured (before 0.29; checkpoints 0.42 at step 5 → 0.63 at step 40; 2 of the 4
    chat answers with IoU > 0.9)."""
    import json

    import mlflow
    import nbformat
    from nbclient import NotebookClient

    from conftest import REPO

    nb = nbformat.read(REPO / "notebooks" / "new-concept.ipynb", as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    story = json.loads(nb.cells[-1].outputs[-1]["text"].strip().splitlines()[-1])
    assert story["before"] <= 0.4, "the model never saw pink: right only when the kind alone tells"
    steps = sorted((int(s), acc) for s, acc in story["checkpoints"].items() if s != "None")
    assert [s for s, _ in steps] == list(range(5, 45, 5))
    assert steps[-1][1] >= 0.45 and steps[-1][1] >= story["before"] + 0.15 and steps[-1][1] > steps[0][1], steps
    history = mlflow.MlflowClient(mlflow_server.uri).get_metric_history(story["run_id"], "eval_grounding_acc50")
    assert sorted((h.step, h.value) for h in history) == steps, "the rise is what MLflow shows per checkpoint"
    assert len(story["chat_ious"]) == 4 and sum(iou >= 0.5 for iou in story["chat_ious"]) >= 1
