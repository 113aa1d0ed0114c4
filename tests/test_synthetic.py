"""The synthetic grounding data: exact boxes, unique captions, the user formats, fixed by the seed."""

import json

import numpy as np

from PIL import Image

from workbench import data, grounding, synthetic
from workbench.synthetic import SyntheticConfig


def test_same_seed_same_files_whatever_the_worker_count(tmp_path):
    cfg = SyntheticConfig(samples=1200, seed=7)
    one = synthetic.generate(tmp_path / "a", cfg, workers=1).read_text()
    two = synthetic.generate(tmp_path / "b", cfg, workers=2).read_text()
    assert one == two
    assert (tmp_path / "a" / "images" / "train" / "001199.png").read_bytes() == \
        (tmp_path / "b" / "images" / "train" / "001199.png").read_bytes()
    other = synthetic.generate(tmp_path / "c", cfg, split="heldout").read_text()
    assert {json.loads(l)["shapes"][0]["box"][0] for l in one.splitlines()[:50]} != \
        {json.loads(l)["shapes"][0]["box"][0] for l in other.splitlines()[:50]}


def test_boxes_are_exact_and_captions_unique(tmp_path):
    path = synthetic.generate(tmp_path, SyntheticConfig(samples=60, seed=1, clutter=0.0))
    for line in path.read_text().splitlines():
        row = json.loads(line)
        captions = [s["caption"] for s in row["shapes"]]
        assert len(captions) == len(set(captions)), captions
        image = Image.open(tmp_path / row["images"][0]).convert("RGB")
        for s in row["shapes"]:
            x1, y1, x2, y2 = s["box"]
            crop = image.crop((x1, y1, x2, y2))
            colour = synthetic.palette(s["colour"])
            inside = int((np.asarray(crop) == colour).all(axis=-1).sum())
            assert inside > 0.3 * (x2 - x1) * (y2 - y1), s  # the shape fills its box
            ring = [image.getpixel((x, y)) for x in range(max(x1 - 2, 0), min(x2 + 2, 448)) for y in (max(y1 - 2, 0),)]
            assert colour not in ring or y1 < 2, s  # and nothing of it lies above the box


def test_every_question_kind_reads_back_through_the_dataset_reader(tmp_path):
    path = synthetic.generate(tmp_path, SyntheticConfig(samples=200, seed=3))
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    samples = data.load([path])
    assert len(samples) == 200 and {r["kind"] for r in rows} == set(synthetic.QUESTION_KINDS)
    for row, sample in zip(rows, samples):
        answer = sample.turns[-1][1]
        if row["kind"] == "find":
            target = next(s for s in row["shapes"] if s["caption"] == row["caption"])
            assert grounding.parse(answer).boxes[0][1] == grounding.to_norm_1000(target["box"], 448, 448)
        elif row["kind"] == "what":  # objects + <bbox> placeholders, filled by the reader
            assert answer == f"<ref>{row['caption']}</ref>" and "<box>[[" in sample.turns[-1][0]
        elif row["kind"] == "describe":
            assert synthetic.mentioned(answer) == {(s["colour"], s["kind"]) for s in row["shapes"]}
        elif row["kind"] == "find_all":
            same = [s for s in row["shapes"] if s["kind"] == row["caption"]]
            assert len(grounding.parse(answer).boxes) == len(same)


def test_new_concept_data_always_shows_the_new_colour(tmp_path):
    cfg = SyntheticConfig(samples=30, seed=5, require="pink", questions={"find": 1.0})
    rows = [json.loads(l) for l in synthetic.generate(tmp_path, cfg).read_text().splitlines()]
    assert all(any(s["colour"] == "pink" for s in r["shapes"]) for r in rows)


def test_hard_cases_pair_each_target_kind_with_another_colour_and_leave_the_plain_mix_alone(tmp_path):
    plain = synthetic.generate(tmp_path / "a", SyntheticConfig(samples=60, seed=5), split="x", kind="find")
    again = synthetic.generate(tmp_path / "b", SyntheticConfig(samples=60, seed=5, hard=0.0), split="x", kind="find")
    assert plain.read_text() == again.read_text(), "hard=0 draws nothing extra: held-out sets stay as they were"
    hard = synthetic.generate(tmp_path / "c", SyntheticConfig(samples=200, seed=5, hard=1.0), split="x")
    rows = [json.loads(line) for line in hard.read_text().splitlines()]
    multi = [r["shapes"] for r in rows if len(r["shapes"]) >= 2]
    assert multi
    for shapes in multi:
        first = shapes[0]
        assert any(s["kind"] == first["kind"] and s["colour"] != first["colour"] for s in shapes[1:]), shapes
        if len(shapes) >= 3:
            assert any(s["colour"] == first["colour"] and s["kind"] != first["kind"] for s in shapes[1:]), shapes
