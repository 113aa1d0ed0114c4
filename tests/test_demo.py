"""The demo model: trained on first use from the tiny model, it grounds the example image."""

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
