"""The grounding overlay: an image with labelled boxes over it.

The browser side (``overlay_panel.js``) draws each box as an absolutely positioned element in percent of
the image, so boxes stay on their objects at any panel width. Synced traits are the contract:

- ``src``: the image for display (a data URI of a copy at most ``DISPLAY_MAX`` px wide — the
  original stays in Python for the model);
- ``width``/``height``: the original image size, for the pixel readout;
- ``boxes``: ``[{"label", "box": [x1, y1, x2, y2] in 0–1000, "kind": "prediction"|"truth", "color"}]``;
- ``hidden``: labels switched off in the legend (the browser writes it; so can Python);
- ``hovered``: the box under the pointer, -1 for none (the browser writes it); Python answers
  with ``readout``, the box in pixels and in 0–1000.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Sequence

import anywidget
import traitlets
from PIL import Image

from .. import grounding, media
from ..errors import UserInputError

DISPLAY_MAX = 1024  # px: the display copy's longest side; the model always sees the original
TRUTH_COLOR, PREDICTION_COLOR = "#3cb44b", "#e6194b"


class Overlay(anywidget.AnyWidget):
    _esm = Path(__file__).with_name("overlay_panel.js")
    _css = Path(__file__).with_name("overlay_panel.css")

    src = traitlets.Unicode("").tag(sync=True)
    width = traitlets.Int(0).tag(sync=True)
    height = traitlets.Int(0).tag(sync=True)
    boxes = traitlets.List(traitlets.Dict()).tag(sync=True)
    hidden = traitlets.List(traitlets.Unicode()).tag(sync=True)
    hovered = traitlets.Int(-1).tag(sync=True)
    readout = traitlets.Unicode("").tag(sync=True)
    caption = traitlets.Unicode("").tag(sync=True)

    def __init__(self, image=None, boxes=(), **kwargs):
        super().__init__(**kwargs)
        self.image: Image.Image | None = None
        if image is not None:
            self.set_image(image)
        if boxes:
            self.boxes = list(boxes)

    def set_image(self, image: media.ImageSource) -> None:
        """Show ``image`` (any source :func:`workbench.media.load_image` takes)."""
        self.image = media.load_image(image)
        self.width, self.height = self.image.size
        self.src = data_uri(display_copy(self.image))

    @traitlets.observe("hovered", "boxes")
    def _update_readout(self, change) -> None:
        i = self.hovered
        if not 0 <= i < len(self.boxes):
            self.readout = ""
            return
        b = self.boxes[i]
        norm = [round(v) for v in b["box"]]
        px = [round(v) for v in grounding.convert(b["box"], "norm_1000", "real", self.width or 1000, self.height or 1000)]
        kind = " (ground truth)" if b.get("kind") == "truth" else ""
        self.readout = f"{b['label']}{kind}: pixels {px} · 0–1000 {norm}"

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(b["label"] for b in self.boxes))

    @property
    def visible_boxes(self) -> list[dict]:
        return [b for b in self.boxes if b["label"] not in self.hidden]

    def toggle(self, label: str) -> None:
        """Switch a label's boxes off or on (what a click in the legend does)."""
        if label not in self.labels:
            raise UserInputError(f"No boxes labelled {label!r}; the labels are {self.labels}.")
        self.hidden = [h for h in self.hidden if h != label] if label in self.hidden else [*self.hidden, label]


def display_copy(image: Image.Image, longest: int = DISPLAY_MAX) -> Image.Image:
    """A copy for the browser whose longest side is at most ``longest`` px (the original is kept)."""
    if max(image.size) <= longest:
        return image
    copy = image.copy()
    copy.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    return copy


def data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG" if image.width * image.height <= 640 * 640 else "JPEG", quality=90)
    kind = "png" if buf.getvalue()[:4] == b"\x89PNG" else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(buf.getvalue()).decode()


def box_list(boxes, *, kind: str = "prediction", coords: str = "norm_1000", size: tuple[int, int] = (1000, 1000),
             default_label: str = "box") -> list[dict]:
    """Normalise the ways boxes are given into the widget's ``boxes`` entries (0–1000).

    Accepts an answer text with ``<ref>``/``<box>``, a :class:`grounding.Parsed`, a list of
    :class:`grounding.Ref`, a ``{label: [box, ...]}`` dict, or a list of ``(label, box)`` pairs or
    bare boxes."""
    if boxes is None:
        return []
    if isinstance(boxes, str):
        boxes = grounding.parse(boxes)
    if isinstance(boxes, grounding.Parsed):
        boxes = boxes.refs
    if isinstance(boxes, dict):
        boxes = [grounding.Ref(label, list(bs)) for label, bs in boxes.items()]
    pairs: list[tuple[str, Sequence[float]]] = []
    for item in boxes:
        if isinstance(item, grounding.Ref):
            pairs += [(item.label or default_label, b) for b in item.boxes]
        elif len(item) == 2 and isinstance(item[0], (str, type(None))):
            pairs.append((item[0] or default_label, item[1]))
        elif len(item) == 4:
            pairs.append((default_label, item))
        else:
            raise UserInputError(f"Cannot read {item!r} as a box: give [x1, y1, x2, y2], (label, box) or a Ref.")
    out = []
    for label, box in pairs:
        if len(box) != 4:
            raise UserInputError(f"The box {list(box)} of {label!r} needs 4 numbers: [x1, y1, x2, y2].")
        norm = grounding.convert(box, coords, "norm_1000", *size)
        out.append({"label": label, "box": [float(v) for v in norm], "kind": kind})
    return out


def colour(entries: list[dict]) -> list[dict]:
    """Prediction against ground truth: two colours; otherwise one palette colour per label."""
    if any(e["kind"] == "truth" for e in entries):
        return [{**e, "color": TRUTH_COLOR if e["kind"] == "truth" else PREDICTION_COLOR} for e in entries]
    order = list(dict.fromkeys(e["label"] for e in entries))
    return [{**e, "color": grounding.PALETTE[order.index(e["label"]) % len(grounding.PALETTE)]} for e in entries]


def overlay(image: media.ImageSource, boxes=None, *, truth=None, coords: str = "norm_1000",
            caption: str = "") -> Overlay:
    """An :class:`Overlay` of ``image`` with predicted ``boxes`` and, optionally, ground ``truth``
    beside them (drawn in a second colour). ``coords`` is how the given boxes are written:
    ``norm_1000`` (InternVL's answers), ``real`` (pixels) or ``norm_1``."""
    widget = Overlay(image, caption=caption)
    size = (widget.width, widget.height)
    entries = box_list(truth, kind="truth", coords=coords, size=size) + box_list(boxes, coords=coords, size=size)
    widget.boxes = colour(entries)
    return widget

