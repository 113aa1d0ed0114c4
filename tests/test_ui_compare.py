"""The compare panel through its traits: the table and plot of checkpoints, A/B chat with overlays,
the MLflow link, and bad input as a message."""

import time

from conftest import ANSWER, EXAMPLE, QUESTION
from workbench.ui.compare import ComparePanel


def wait_idle(panel, timeout=180):
    deadline = time.monotonic() + timeout
    time.sleep(0.2)
    while panel.state != "idle" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert panel.state == "idle"


def test_ab_chat_between_the_base_and_a_checkpoint(finished):
    panel = ComparePanel(mlflow_base="/mlflow/")
    try:
        assert finished.id in panel.table.value and "eval_grounding_acc50" in panel.table.value
        assert bytes(panel.plot.value).startswith(b"\x89PNG")
        rows = [i for i, c in enumerate(panel._found) if c.job == finished.id]
        panel.choose("base", rows[-1])
        panel.ask_button.click()  # nothing loaded yet: a message, not a traceback
        wait_idle(panel)
        assert panel.error == "Load A and B first."
        panel.load_button.click()
        wait_idle(panel)
        assert panel.error == "", panel.error
        assert "shared by both sides" in panel.memory.value
        assert panel.mlflow_link.startswith("/mlflow/#/experiments/") and finished.run_id in panel.mlflow_link
        panel.question.value, panel.image_path.value = QUESTION, str(EXAMPLE)
        panel.ask_button.click()
        wait_idle(panel)
        assert panel.error == "", panel.error
        assert panel.answer_a == ANSWER  # the demo model itself
        assert panel.answer_b  # the checkpoint's answer, whatever it learned in 4 steps
        overlays = [w for w in panel.side_a.children if type(w).__name__ == "Overlay"]
        assert len(overlays) == 1 and overlays[0].boxes and overlays[0].boxes[0]["label"] == "the red circle"

        panel.image_path.value = "/no/such/picture.png"
        panel.ask_button.click()
        wait_idle(panel)
        assert "picture.png" in panel.error and "wb-error" in panel.message.value
    finally:
        panel.close()
