"""The demo model (workbench/assets/demo-model): trained on synthetic shapes, it grounds them."""

import pytest

import workbench
from workbench import catalog, demo, grounding
from workbench.errors import ModelNotFoundError


def test_default_model_is_the_demo_and_it_grounds_the_example_image(demo_dir):
    assert catalog.DEFAULT_MODEL == "demo"
    session = workbench.load(name="demo-default")
    try:
        assert session.path == demo_dir and session.spec.name == "demo" and session.max_tiles == 1
        conv = workbench.Conversation(session, log=False)
        for label, box in demo.OBJECTS.items():  # the image goes before the question, no tag needed
            conv.clear()
            ref = grounding.parse(conv.ask(grounding.question(label), [demo.EXAMPLE_IMAGE])).refs[0]
            truth = grounding.to_norm_1000(box, 448, 448)
            assert ref.label == label and grounding.iou(ref.boxes[0], truth) >= 0.9, (label, ref)
        conv.clear()
        assert conv.ask("Describe the image.", [demo.EXAMPLE_IMAGE]) == \
            "There are three shapes: a red circle, a green triangle and a blue square."
        conv.clear()
        assert conv.ask("<image>What is at <box>[[134, 268, 377, 513]]</box>?", [demo.EXAMPLE_IMAGE]) == \
            "<ref>the red circle</ref>"
    finally:
        workbench.unload("demo-default")


def test_example_image_is_what_the_renderer_draws(tmp_path, monkeypatch):
    """assets/demo-shapes.png (= examples/demo-shapes.png) is drawn by the synthetic renderer from demo.OBJECTS."""
    from PIL import Image, ImageChops

    from conftest import REPO

    committed = demo.EXAMPLE_IMAGE
    assert (REPO / "examples" / "demo-shapes.png").read_bytes() == committed.read_bytes()
    monkeypatch.setattr(demo, "EXAMPLE_IMAGE", tmp_path / "demo-shapes.png")
    redrawn = Image.open(demo.example_image()).convert("RGB")
    assert ImageChops.difference(redrawn, Image.open(committed).convert("RGB")).getbbox() is None


def test_a_missing_demo_model_says_how_to_restore_it(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "COMMITTED", tmp_path / "demo-model")
    with pytest.raises(ModelNotFoundError, match="git checkout -- workbench/assets/demo-model"):
        demo.ensure_built()


@pytest.mark.slow
def test_committed_demo_model_meets_its_held_out_targets(tmp_path):
    """The whole held-out split (seed 2026: 300 find-one questions, 100 descriptions), greedy, on
    the CPU, against the issue's targets. Measured when committed: single 1.00, 2–4 shapes 0.804,
    describe 0.93 (the same on the GPU in bf16 weights)."""
    files = demo.make_data(tmp_path, train=0)
    find = demo.evaluate(demo.ensure_built(), files["heldout_find"], device="cpu")
    describe = demo.evaluate(demo.ensure_built(), files["heldout_describe"], device="cpu")
    assert (find["single_n"], find["multi_n"], describe["describe_n"]) == (65, 235, 100)
    assert find["single_acc"] >= 0.9, find
    assert find["multi_acc"] >= 0.8, find
    assert describe["describe_acc"] >= 0.9, describe


@pytest.mark.slow
def test_new_concept_notebook_teaches_pink_and_the_rise_is_in_mlflow(mlflow_server):
    """notebooks/new-concept.ipynb top to bottom in a real kernel: a CPU LoRA job teaches the
    demo model "pink"; Acc@0.5 on held-out pink questions rises per checkpoint (as logged to
    MLflow); the merged model answers in the chat panel. Fixed seeds; thresholds well below what
    was measured (before 0.04; checkpoints 0.25 at step 5 → 0.75 at step 25 → 0.71 at step 40)."""
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


def test_grow_adds_layers_that_start_as_the_identity(tiny_dir, tmp_path):
    """A grown model (more language and vision layers) gives the same logits as the one it grew
    from, so later training keeps what the earlier stages learnt."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    grown = demo.grow(tiny_dir, tmp_path / "grown", text_layers=5, vision_layers=3)
    a = AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    b = AutoModelForImageTextToText.from_pretrained(grown, dtype=torch.float32).eval()
    assert (len(b.model.language_model.layers), len(b.model.vision_tower.encoder.layer)) == (5, 3)
    assert (len(a.model.language_model.layers), len(a.model.vision_tower.encoder.layer)) != (5, 3)
    processor = AutoProcessor.from_pretrained(grown)
    text = processor.apply_chat_template([{"role": "user", "content": "<IMG_CONTEXT>\nDescribe the image."}],
                                         add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.open(demo.EXAMPLE_IMAGE).convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(a(**inputs).logits, b(**inputs).logits)
    # the new layers are real layers: their inner weights are not zero, only their output paths
    assert b.model.language_model.layers[1].self_attn.q_proj.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="grow adds layers"):
        demo.grow(tiny_dir, tmp_path / "smaller", text_layers=1, vision_layers=1)
