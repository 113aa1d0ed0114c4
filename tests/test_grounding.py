import pytest
from PIL import Image

from workbench import grounding as G
from workbench.errors import UserInputError


def test_several_refs_and_boxes():
    p = G.parse("<ref>the red bus</ref><box>[[40, 120, 410, 600], [500, 10, 600, 90]]</box> and "
                "<ref>a cyclist</ref><box>[[1, 2, 3, 4]]</box>")
    assert [(r.label, r.boxes) for r in p.refs] == [
        ("the red bus", [(40, 120, 410, 600), (500, 10, 600, 90)]), ("a cyclist", [(1, 2, 3, 4)])]
    assert p.problems == []
    assert len(p.boxes) == 3


def test_box_without_ref_and_ref_without_box():
    p = G.parse("There: <box>[[5, 5, 50, 50]]</box>. It is <ref>a mug</ref>.")
    assert [(r.label, r.boxes) for r in p.refs] == [(None, [(5, 5, 50, 50)]), ("a mug", [])]
    assert G.parse("<ref>a</ref> far away text <box>[[1,1,2,2]]</box>").refs[1].label is None


def test_malformed_text_is_reported_never_raised():
    p = G.parse("<ref>x</ref><box>[[1, 2, 3]]</box><box>[[9, 9, 1, 1]]</box><box>[[0, 0, 1200, 5]]</box><ref>open")
    assert p.refs[0].boxes == [] and p.refs[1].label is None
    assert [b for label, b in p.boxes] == [(1, 1, 9, 9), (0, 0, 1000, 5)]
    text = " ".join(p.problems)
    assert "groups of four" in text and "swapped" in text and "clipped" in text and "unclosed" in text
    assert G.parse("").refs == [] and G.parse("<box>[[a, b, c, d]]</box>").problems


def test_coordinate_conversion_round_trips():
    box = (64, 48, 320, 240)
    n1000 = G.convert(box, "real", "norm_1000", 640, 480)
    assert n1000 == (100, 100, 500, 500)
    assert G.convert(n1000, "norm_1000", "norm_1", 640, 480) == (0.1, 0.1, 0.5, 0.5)
    assert G.convert((0.1, 0.1, 0.5, 0.5), "norm_1", "real", 640, 480) == pytest.approx(box)
    assert G.to_norm_1000((1, 1, 3, 3), 3, 3) == (333, 333, 1000, 1000)
    with pytest.raises(UserInputError, match="bbox_type"):
        G.convert(box, "pixels", "norm_1", 640, 480)


def test_iou_and_accuracy():
    assert G.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1
    assert G.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert G.iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0
    assert G.accuracy([(0, 0, 10, 10), (0, 0, 10, 10), None], [(0, 0, 10, 10), (5, 0, 15, 10), (0, 0, 1, 1)]) == pytest.approx(1 / 3)


def test_format_round_trip():
    text = G.format_ref("the mug", [(120.4, 300, 380, 720)])
    assert text == "<ref>the mug</ref><box>[[120, 300, 380, 720]]</box>"
    assert G.parse(text).refs[0].boxes == [(120, 300, 380, 720)]


def test_draw_labels_boxes_on_a_copy():
    img = Image.new("RGB", (400, 200), "white")
    out = G.draw(img, "<ref>left</ref><box>[[100, 200, 400, 800]]</box><ref>right</ref><box>[[600, 200, 900, 800]]</box>")
    assert img.getpixel((40, 100)) == (255, 255, 255), "the original is untouched"
    red, green = (230, 25, 75), (60, 180, 75)
    assert out.getpixel((40, 100)) == red  # left edge of box 1 at x = 0.1 * 400
    assert out.getpixel((240, 100)) == green  # left edge of box 2 at x = 0.6 * 400
    assert out.getpixel((100, 100)) == (255, 255, 255)  # inside the box stays clear
    label_area = out.crop((41, 0, 100, 39))  # the label sits above the box
    assert red in [c for _, c in label_area.getcolors(10000)]
    assert (255, 255, 255) in [c for _, c in label_area.getcolors(10000)]


def test_line_width_scales_with_the_image():
    small = G.draw(Image.new("RGB", (200, 200), "white"), "<box>[[250, 250, 750, 750]]</box>")
    big = G.draw(Image.new("RGB", (2000, 2000), "white"), "<box>[[250, 250, 750, 750]]</box>")
    def width(img, y):
        return sum(1 for x in range(img.width // 2) if img.getpixel((x, y)) != (255, 255, 255))
    assert width(big, 1000) > width(small, 100) >= 2
