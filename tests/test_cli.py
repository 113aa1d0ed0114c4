"""The ``workbench`` command as a user runs it: a subprocess, real stdin/stdout."""

import os
import subprocess
import sys

import pytest
from PIL import Image

from conftest import ANSWER, EXAMPLE, QUESTION


def run(*args, stdin=None, timeout=240):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "workbench", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_one_shot_answer_on_the_default_model(demo_dir):
    out = run("infer", "--query", "<image>Describe the image.", "--images", str(EXAMPLE), "--max-new-tokens", "40")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "There are three shapes: a red circle, a green triangle and a blue square."


def test_stream_and_draw_boxes(demo_dir, tmp_path):
    png = tmp_path / "boxes.png"
    out = run("infer", "--model", str(demo_dir), "--query", "<image>" + QUESTION, "--images", str(EXAMPLE),
              "--stream", "--max-new-tokens", "40", "--draw-boxes", str(png))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ANSWER
    assert "1 box(es) drawn" in out.stderr
    drawn = Image.open(png).convert("RGB")
    assert drawn.size == (640, 480)
    # The box [127, 250, 444, 585] in 0–1000 is x 81..284, y 120..281 in pixels: its left edge is drawn.
    assert drawn.getpixel((81, 200)) == (230, 25, 75) != Image.open(EXAMPLE).convert("RGB").getpixel((81, 200))


def test_interactive_session(demo_dir):
    script = f"hello <image>\n{EXAMPLE}\nWhat about <image>?\n/no/such.png\nclear\nexit\n"
    out = run("infer", "--max-new-tokens", "4", stdin=script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("<<< ") == 4
    assert "Input an image path or URL for <image> 1:" in out.stdout
    assert "(conversation cleared)" in out.stdout
    assert "Image not found: /no/such.png" in out.stderr  # a bad image does not end the chat


@pytest.mark.parametrize("args,message", [
    (["--model", "internvl2-2bb"], "Unknown model name 'internvl2-2bb'. Did you mean 'internvl2-2b'"),
    (["--query", "<image>?", "--images", "/no/such.png"], "Image not found: /no/such.png"),
    (["--query", "<image><image>?", "--images", str(EXAMPLE)], "2 <image> tag(s) but 1 image(s)"),
    (["--model", str(EXAMPLE.parent)], "not a model directory"),
    (["--device-map", '{"model": 0, "lm_head": 3}', "--query", "hi"], "names GPU(s)"),
    (["--max-memory", "15GB", "15GB", "--query", "hi"], "no GPU is visible"),
    (["--max-memory", "lots", "--query", "hi"], "write it like '15GB'"),
])
def test_bad_input_is_one_clear_line(demo_dir, args, message):
    out = run("infer", *args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
