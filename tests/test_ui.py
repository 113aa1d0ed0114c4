"""The notebook panels through their traits and callbacks (no browser; see test_browser.py)."""

import datetime
import io
import subprocess
import sys
import time

import pytest
from PIL import Image

import workbench
from conftest import ANSWER, EXAMPLE, QUESTION
from workbench import grounding, ui
from workbench.ui import chat as chat_ui
from workbench.ui.overlay_panel import DISPLAY_MAX, PREDICTION_COLOR, TRUTH_COLOR

NOW = datetime.datetime.now(datetime.timezone.utc)


def until(condition, timeout=60.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


@pytest.fixture
def demo(demo_dir):
    session = workbench.load(demo_dir, name="ui-demo")
    yield session
    workbench.unload("ui-demo")


# -- overlay --------------------------------------------------------------------------------------

def test_overlay_from_an_answer():
    o = ui.overlay(EXAMPLE, "<ref>circle</ref><box>[[125, 250, 375, 583]]</box> and <ref>sq</ref><box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>")
    assert (o.width, o.height) == (640, 480) and o.src.startswith("data:image/png;base64,")
    assert [b["label"] for b in o.boxes] == ["circle", "sq", "sq"]
    assert o.boxes[0]["color"] != o.boxes[1]["color"] == o.boxes[2]["color"], "one colour per label"
    o.hovered = 0
    assert o.readout == "circle: pixels [80, 120, 240, 280] · 0–1000 [125, 250, 375, 583]"
    o.hovered = -1
    assert o.readout == ""


def test_overlay_legend_toggles_labels():
    o = ui.overlay(EXAMPLE, {"a": [[0, 0, 10, 10]], "b": [[10, 10, 20, 20]]})
    o.toggle("a")
    assert o.hidden == ["a"] and [b["label"] for b in o.visible_boxes] == ["b"]
    o.toggle("a")
    assert o.hidden == []
    with pytest.raises(workbench.errors.UserInputError, match="No boxes labelled 'c'"):
        o.toggle("c")


def test_overlay_truth_beside_prediction_in_pixels():
    o = ui.overlay(EXAMPLE, [("circle", (90, 120, 240, 280))], truth=[("circle", (80, 120, 240, 280))], coords="real")
    truth, pred = o.boxes
    assert (truth["kind"], truth["color"]) == ("truth", TRUTH_COLOR)
    assert (pred["kind"], pred["color"]) == ("prediction", PREDICTION_COLOR)
    assert truth["box"] == [125.0, 250.0, 375.0, pytest.approx(583.333, abs=1e-3)]
    o.hovered = 0
    assert o.readout.startswith("circle (ground truth): pixels [80, 120, 240, 280]")


def test_overlay_bad_boxes_say_what_to_fix():
    with pytest.raises(workbench.errors.UserInputError, match=r"needs 4 numbers"):
        ui.overlay(EXAMPLE, [("a", (1, 2, 3))])
    with pytest.raises(workbench.errors.UserInputError, match="bbox_type"):
        ui.overlay(EXAMPLE, [(1, 2, 3, 4)], coords="pixels")


def test_huge_image_is_downscaled_for_display_only():
    big = Image.new("RGB", (4000, 3000), "white")
    o = ui.overlay(big, [(0, 0, 500, 500)])
    shown = Image.open(io.BytesIO(__import__("base64").b64decode(o.src.split(",", 1)[1])))
    assert max(shown.size) == DISPLAY_MAX and (o.width, o.height) == (4000, 3000)
    assert o.image.size == (4000, 3000)


def test_markdown_is_escaped_and_refs_highlighted():
    out = chat_ui.to_html("**hi** <script>x</script> " + ANSWER)
    assert "<strong>hi</strong>" in out and "<script>" not in out and "&lt;script&gt;" in out
    assert '<span class="wb-ref"' in out and ">the red circle</span>" in out and "[[127, 250, 444, 585]]" in out


# -- chat panel ------------------------------------------------------------------------------------

def test_send_streams_an_answer_with_an_overlay(demo):
    panel = ui.ChatPanel(demo)
    panel.attach(str(EXAMPLE))
    until(lambda: len(panel.attachments) == 1)
    panel.input.value = QUESTION
    panel.send_button.click()
    assert panel.busy and panel.send_button.description == "Stop"
    turn = panel.wait(60)
    assert not panel.busy and panel.send_button.description == "Send"
    assert turn.answer == ANSWER and panel.error == ""
    assert panel.input.value == "" and panel.attachments == [], "sent text and images are cleared"
    view = panel.messages.children[-1]
    question, answer, overlay = view.children
    assert "region this sentence describes" in question.children[0].value and len(question.children[1].children) == 1
    assert "the red circle</span>" in answer.value and "wb-chat-done" in answer._dom_classes
    assert [b["label"] for b in overlay.boxes] == ["the red circle"] and (overlay.width, overlay.height) == (640, 480)


def test_stop_keeps_the_partial_answer(tiny):
    panel = ui.ChatPanel(tiny)
    panel.max_new_tokens.value = 4000
    panel.send("Tell me everything.", images=[EXAMPLE])
    until(lambda: panel.messages.children and "▍" in panel.messages.children[-1].children[1].value)
    panel.send_button.click()  # it says Stop now
    turn = panel.wait(60)
    assert turn.stopped and 0 < turn.answer_tokens < 4000
    assert "(stopped)" in panel.messages.children[-1].children[1].value


def test_undo_regenerate_clear(demo):
    panel = ui.ChatPanel(demo)
    panel.send(grounding.question("the blue square"), images=[EXAMPLE])
    panel.wait(60)
    panel.send("Describe the image.")
    panel.wait(60)
    assert len(panel.messages.children) == 2 == len(panel.conversation.turns)
    panel.undo_button.click()
    assert len(panel.messages.children) == 1 == len(panel.conversation.turns)
    panel.regenerate_button.click()
    turn = panel.wait(60)
    assert turn.answer.startswith("<ref>the blue square</ref>") and len(panel.messages.children) == 1
    panel.clear_button.click()
    assert panel.messages.children == () and panel.conversation.turns == []
    panel.undo_button.click()
    assert "Nothing to undo" in panel.error


def test_bad_input_is_shown_in_place(demo, http_server):
    panel = ui.ChatPanel(demo)
    panel.upload.value = ({"name": "notes.txt", "type": "text/plain", "size": 12, "content": memoryview(b"not an image"),
                           "last_modified": NOW},)
    assert "notes.txt: the given bytes is not an image" in panel.error and panel.attachments == []
    panel.attach(f"{http_server}/missing.png")
    until(lambda: panel.error)
    assert "Could not fetch" in panel.error and "404" in panel.error
    panel.send("<image><image> two?", images=[EXAMPLE])
    panel.wait(10)
    assert "2 <image> tag(s) but 1 image(s)" in panel.error and panel.messages.children == ()
    panel.max_new_tokens.value = 10
    panel.send("Describe the image.", images=[EXAMPLE])  # the panel still works afterwards
    assert panel.wait(60).answer and panel.error == ""


def test_huge_upload_keeps_the_original_for_the_model(demo):
    big = Image.new("RGB", (3000, 2000), "white")
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    panel = ui.ChatPanel(demo)
    panel.upload.value = ({"name": "big.png", "type": "image/png", "size": len(buf.getvalue()),
                           "content": memoryview(buf.getvalue()), "last_modified": NOW},)
    assert panel.attachments[0][1].size == (3000, 2000)
    assert "shown downscaled, the model gets the original" in panel.status.value


def test_sending_with_no_model_loaded_says_what_to_do():
    # A fresh process, so that no other test's session is loaded.
    code = ("from workbench import ui; p = ui.ChatPanel(); p.send('hello'); p.wait(30); "
            "print(p.error); print(p.busy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["No model is loaded. Load one in the Model panel, or run workbench.load() "
                                       "(the default is the offline demo model).", "False"]


def test_sending_to_an_unloaded_session(tiny_dir):
    session = workbench.load("tiny", name="ui-gone")
    panel = ui.ChatPanel(session)
    workbench.unload("ui-gone")
    panel.send("hello")
    panel.wait(10)
    assert "was unloaded" in panel.error and not panel.busy


# -- model panel -----------------------------------------------------------------------------------

def test_model_panel_loads_reports_and_unloads(tiny_dir):
    panel = ui.ModelPanel(refresh_s=0)
    assert panel.limits == [] and "No GPU is visible" in panel.children[3].value
    panel.model.value = "tiny"
    panel.session_name.value = "ui-model"
    loaded = []
    panel.on_loaded.append(loaded.append)
    panel.load(wait=True)
    assert panel.error == "" and "Loaded <b>ui-model</b>" in panel.status.value
    assert [s.name for s in loaded] == ["ui-model"] and "ui-model" in panel.loaded.options
    assert panel.progress.description == "ready"
    bar, label = panel.memory.children[-1].children
    assert 0 < bar.value < 1 and "CPU (this process)" in label.value and "GiB" in label.value
    panel.loaded.value = "ui-model"
    panel.unload_button.click()
    assert "ui-model" not in workbench.sessions() and "ui-model" not in panel.loaded.options
    panel.close()


def test_model_panel_errors_in_place(tiny_dir):
    panel = ui.ModelPanel(refresh_s=0)
    panel.model.value = "internvl2-2bb"
    panel.load(wait=True)
    assert "Did you mean 'internvl2-2b'" in panel.error and not panel.busy
    panel.model.value = "tiny"
    panel.request = lambda: dict(model="tiny", max_memory={0: "1MB"})  # the GPU field of a GPU machine
    panel.load(wait=True)
    assert "no GPU is visible" in panel.error
    panel.close()


def test_app_points_chat_at_the_model_just_loaded(tiny_dir):
    app = ui.App()
    app.model.model.value = "tiny"
    app.model.session_name.value = "ui-app"
    app.model.load(wait=True)
    try:
        assert app.chat._session().name == "ui-app"
        app.chat.max_new_tokens.value = 5
        app.chat.send("hello")
        assert app.chat.wait(60).answer_tokens <= 5 and app.chat.conversation.session.name == "ui-app"
    finally:
        workbench.unload("ui-app")
        app.close()


def test_trace_toggle_is_the_lasting_tracing_choice():
    from workbench import tracing

    panel = ui.ChatPanel()
    assert panel.trace_toggle.value is False  # the test home has tracing off (conftest)
    panel.trace_toggle.value = True
    try:
        assert tracing.enabled() and ui.ChatPanel().trace_toggle.value is True  # a new panel (or kernel) follows
    finally:
        panel.trace_toggle.value = False
    assert not tracing.enabled()
