"""Dataset formats, validation with every problem reported, and encoding with loss on answers."""

import json

import pytest
from transformers import AutoProcessor

from conftest import EXAMPLE
from workbench import data
from workbench.errors import UserInputError


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "shapes.png").write_bytes(EXAMPLE.read_bytes())
    return tmp_path


GOOD = [
    {"query": "What is in the picture?", "response": "Shapes.", "images": ["img/shapes.png"]},
    {"query": "Compare them.", "response": "Same.", "history": [], "images": ["img/shapes.png", "img/shapes.png"]},
    {"query": "And the colour?", "response": "Red.", "history": [["<image>What is this?", "A circle."]], "images": ["img/shapes.png"]},
    {"query": "Frame 1: <image>\nFrame 2: <image>\nWhat changed?", "response": "Nothing.", "images": "img/shapes.png,img/shapes.png"},
    {"query": "<img>img/shapes.png</img> Describe this.", "response": "Three shapes."},
    {"query": "Hello", "response": "Hi! How can I help?"},
    {"query": "Where is <ref-object>?", "response": "<bbox>", "images": ["img/shapes.png"],
     "objects": json.dumps([{"caption": "the red circle", "bbox": [80, 120, 240, 280], "bbox_type": "real", "image": 0}])},
    {"query": "What is at <bbox>?", "response": "<ref-object>", "images": ["img/shapes.png"],
     "objects": json.dumps([{"caption": "two things", "bbox": [[0.5, 0.25, 0.75, 0.5], [0, 0, 1, 1]], "bbox_type": "norm_1", "image": 0}])},
    {"query": "Find <ref>the square</ref>", "response": "<ref>the square</ref><box>[[562, 417, 875, 833]]</box>", "images": ["img/shapes.png"]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>Where is <ref-object>?"},
                  {"role": "assistant", "content": "<bbox>"}], "images": ["img/shapes.png"],
     "objects": {"ref": ["the green triangle"], "bbox": [[340, 40, 500, 170]], "bbox_type": "real", "image_id": [0]}},
]


def test_every_user_format_reads(folder):
    path = write_jsonl(folder / "train.jsonl", GOOD)
    samples, problems = data.read(path)
    assert problems == [] and len(samples) == len(GOOD)
    s = {i: x for i, x in enumerate(samples)}
    assert s[0].turns == [("<image>\nWhat is in the picture?", "Shapes.")] and s[0].images == [str(folder / "img/shapes.png")]
    assert s[1].turns[-1][0].startswith("Image-1: <image>\nImage-2: <image>\n")
    assert s[2].turns[0] == ("<image>What is this?", "A circle.") and len(s[2].images) == 1
    assert s[3].turns[0][0].count("<image>") == 2 and len(s[3].images) == 2
    assert s[4].turns[0][0] == "<image> Describe this." and s[4].images == [str(folder / "img/shapes.png")]
    assert s[5].images == [] and not s[5].has_boxes
    assert s[6].turns == [("<image>\nWhere is <ref>the red circle</ref>?", "<box>[[125, 250, 375, 583]]</box>")]
    assert s[7].turns == [("<image>\nWhat is at <box>[[500, 250, 750, 500], [0, 0, 1000, 1000]]</box>?", "<ref>two things</ref>")]
    assert s[8].has_boxes
    assert s[9].system == "Be brief." and s[9].turns == [("<image>Where is <ref>the green triangle</ref>?",
                                                         "<box>[[531, 83, 781, 354]]</box>")]


def test_json_list_form_and_line_numbers(folder):
    path = folder / "train.json"
    path.write_text('[\n  {"query": "hi", "response": "hello"},\n  {"query": "x"},\n  {"query": "<image>", "response": "y"}\n]\n')
    samples, problems = data.read(path)
    assert len(samples) == 1
    assert [(p.line, p.message.split(" ")[0]) for p in problems] == [(3, "'query'"), (4, "1")]


def test_every_malformed_line_is_reported_at_once(folder):
    bad = [
        GOOD[0],
        '{"query": "broken", ',
        {"query": "no answer"},
        {"query": "<image><image>", "response": "r", "images": ["img/shapes.png"]},
        {"query": "q", "response": "r", "images": ["img/missing.png"]},
        {"query": "Where is <ref-object>?", "response": "<bbox>", "images": ["img/shapes.png"], "objects": "[{not json"},
        {"query": "Where is <ref-object>?", "response": "<bbox>", "images": ["img/shapes.png"],
         "objects": json.dumps([{"caption": "c", "bbox": [1, 2, 3], "bbox_type": "real", "image": 0}])},
        {"query": "q", "response": "<bbox>", "images": ["img/shapes.png"],
         "objects": json.dumps([{"caption": "c", "bbox": [1, 2, 3, 4], "bbox_type": "pixels", "image": 0}])},
        {"query": "q", "response": "<bbox>", "images": ["img/shapes.png"],
         "objects": json.dumps([{"caption": "c", "bbox": [1, 2, 3, 4], "bbox_type": "real", "image": 3}])},
        {"messages": [{"role": "assistant", "content": "first?"}]},
        {"query": "q", "response": "  "},
        ["not", "an", "object"],
        {"query": "q", "response": "r", "history": [["only one"]]},
    ]
    path = write_jsonl(folder / "bad.jsonl", bad)
    with pytest.raises(data.DataError) as info:
        data.load(path)
    problems = info.value.problems
    assert [p.line for p in problems] == list(range(2, 14))
    text = str(info.value)
    for needle in ("not valid JSON", "'query' and 'response' must both be strings", "2 <image> tag(s) but 1 image(s)",
                   "image not found: img/missing.png", "'objects' is not valid JSON", "bbox must be [x_min",
                   "bbox_type 'pixels'", "image index 3", "assistant message with no user message", "empty response",
                   "expected a JSON object", "'history' must be a list"):
        assert needle in text, needle
    assert f"{path}:2:" in text


def test_v1_5_rule_images_in_one_turn(folder):
    path = write_jsonl(folder / "t.jsonl", [GOOD[2]])
    _, problems = data.read(path, multi_turn_images=False)
    assert problems == []  # one image turn in history, none in the last: fine
    row = {"query": "<image>b", "response": "r", "history": [["<image>a", "r"]], "images": ["img/shapes.png"] * 2}
    _, problems = data.read(write_jsonl(folder / "u.jsonl", [row]), multi_turn_images=False)
    assert "more than one turn" in problems[0].message


def test_encode_puts_loss_on_answers_only(folder, tiny_dir):
    processor = AutoProcessor.from_pretrained(tiny_dir)
    sample = data.read(write_jsonl(folder / "t.jsonl", [GOOD[2]]))[0][0]
    enc = data.encode(sample, processor, max_length=4096, max_tiles=1)
    tok = processor.tokenizer
    learned = [i for i, l in zip(enc.input_ids, enc.labels) if l != -100]
    assert tok.decode(learned) == "A circle.<|im_end|>Red.<|im_end|>"
    assert enc.input_ids.count(tok.convert_tokens_to_ids("<IMG_CONTEXT>")) == 256
    assert enc.pixel_values.shape[0] == 1 and not enc.truncated


def test_max_length_cuts_text_never_an_image(folder, tiny_dir):
    processor = AutoProcessor.from_pretrained(tiny_dir)
    long = {"query": "Describe.", "response": "word " * 200, "images": ["img/shapes.png"]}
    sample = data.read(write_jsonl(folder / "t.jsonl", [long]))[0][0]
    enc = data.encode(sample, processor, max_length=300, max_tiles=1)
    assert enc.truncated and len(enc.input_ids) == 300 and enc.labels[-1] != -100
    assert data.encode(sample, processor, max_length=200, max_tiles=1) is None  # the image block is 258 tokens
    report = data.check(folder / "t.jsonl", processor, max_length=200, max_tiles=1)
    assert report.skipped == 1 and "left out because their images alone are longer" in str(report)


def test_missing_file_and_wrong_suffix(folder):
    _, problems = data.read([folder / "nope.jsonl", folder / "img" / "shapes.png"])
    assert "file not found" in problems[0].message and "unknown file type" in problems[1].message
    with pytest.raises(UserInputError, match="empty"):
        data.load(write_jsonl(folder / "empty.jsonl", []))
