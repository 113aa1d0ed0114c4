"""InternVL's grounding text: parse it, convert coordinates, score it, draw it.

A grounded answer looks like ``<ref>the red bus</ref><box>[[40, 120, 410, 600]]</box>``: several
refs per answer, several boxes per ref, sometimes a ``<box>`` with no ``<ref>``, coordinates in
0–1000 of the image the question was about. Parsing never raises: what cannot be read is listed in
``Parsed.problems`` and the rest is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Iterable, Sequence

from PIL import Image, ImageDraw, ImageFont

from .errors import UserInputError

BoxT = tuple[float, float, float, float]
COORD_TYPES = ("real", "norm_1000", "norm_1")

_TAG = re.compile(r"<ref>(?P<ref>.*?)</ref>|<box>(?P<box>.*?)</box>|<quad>(?P<quad>.*?)</quad>", re.S)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class Ref:
    label: str | None  # None for a <box> with no <ref> before it
    boxes: list[BoxT] = field(default_factory=list)


@dataclass
class Parsed:
    refs: list[Ref]
    problems: list[str]

    @property
    def boxes(self) -> list[tuple[str | None, BoxT]]:
        return [(r.label, b) for r in self.refs for b in r.boxes]


def parse(text: str) -> Parsed:
    """Read every ``<ref>``/``<box>`` in an answer. A box directly after a ref (only whitespace or
    punctuation between) belongs to it; any other box stands alone with label None."""
    refs: list[Ref] = []
    problems: list[str] = []
    pending: Ref | None = None  # the last ref, while a box may still follow it
    last_end = 0
    for m in _TAG.finditer(text):
        between = text[last_end:m.start()]
        if pending is not None and between.strip(" \t\n,.;:"):
            pending = None
        last_end = m.end()
        if m.group("ref") is not None:
            pending = Ref(m.group("ref").strip())
            refs.append(pending)
        elif m.group("box") is not None:
            boxes = _read_boxes(m.group("box"), problems)
            if pending is not None:
                pending.boxes.extend(boxes)
            elif boxes:
                refs.append(Ref(None, boxes))
            pending = None
        else:
            problems.append(f"<quad> regions are not supported yet and were skipped: {m.group(0)[:60]!r}")
    for tag in ("ref", "box"):
        opened, closed = text.count(f"<{tag}>"), text.count(f"</{tag}>")
        if opened != closed:
            problems.append(f"{opened} <{tag}> but {closed} </{tag}>: an unclosed tag was skipped.")
    return Parsed(refs, problems)


def _read_boxes(body: str, problems: list[str]) -> list[BoxT]:
    numbers = [float(n) for n in _NUMBER.findall(body)]
    if not numbers or len(numbers) % 4:
        problems.append(f"box {body.strip()[:60]!r} does not hold groups of four numbers; skipped.")
        return []
    boxes = []
    for i in range(0, len(numbers), 4):
        x1, y1, x2, y2 = numbers[i:i + 4]
        if x2 < x1 or y2 < y1:
            problems.append(f"box {numbers[i:i + 4]} has its corners swapped; reordered.")
            x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
        if min(x1, y1) < 0 or max(x2, y2) > 1000:
            problems.append(f"box {numbers[i:i + 4]} leaves the 0–1000 range; clipped.")
            x1, y1, x2, y2 = (min(max(v, 0.0), 1000.0) for v in (x1, y1, x2, y2))
        boxes.append((x1, y1, x2, y2))
    return boxes


def format_boxes(boxes: Sequence[BoxT]) -> str:
    """``<box>[[x1, y1, x2, y2], ...]</box>`` with integer 0–1000 coordinates."""
    inner = ", ".join("[" + ", ".join(str(int(round(v))) for v in b) + "]" for b in boxes)
    return f"<box>[{inner}]</box>"


def format_ref(label: str, boxes: Sequence[BoxT]) -> str:
    return f"<ref>{label}</ref>{format_boxes(boxes)}"


# InternVL's grounding prompt (its own grounding data and evaluation ask this way).
PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: "


def question(label: str) -> str:
    """The grounding question for ``label``: ``question("the red circle")`` asks for its box."""
    return f"{PROMPT}<ref>{label}</ref>"


# ---------------------------------------------------------------------------------------------
# Coordinates and scores


def convert(box: Sequence[float], src: str, dst: str, width: int, height: int) -> BoxT:
    """Convert a box between ``real`` (pixels), ``norm_1000`` and ``norm_1`` coordinates."""
    for t in (src, dst):
        if t not in COORD_TYPES:
            raise UserInputError(f"Unknown bbox_type {t!r}: use one of {', '.join(COORD_TYPES)}.")
    if width <= 0 or height <= 0:
        raise UserInputError(f"Image size must be positive, got {width}x{height}.")
    scale = {"real": (width, height), "norm_1000": (1000.0, 1000.0), "norm_1": (1.0, 1.0)}
    (sw, sh), (dw, dh) = scale[src], scale[dst]
    x1, y1, x2, y2 = box
    return (x1 / sw * dw, y1 / sh * dh, x2 / sw * dw, y2 / sh * dh)


def to_norm_1000(box: Sequence[float], width: int, height: int) -> BoxT:
    """Pixels → integer 0–1000, as InternVL's data pipeline writes them (``round(x / w * 1000)``)."""
    return tuple(float(round(v)) for v in convert(box, "real", "norm_1000", width, height))  # type: ignore[return-value]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def accuracy(predicted: Iterable[Sequence[float] | None], truth: Iterable[Sequence[float]], threshold: float = 0.5) -> float:
    """Share of pairs whose IoU ≥ threshold (Acc@0.5 by default); a missing prediction is a miss."""
    pairs = list(zip(predicted, truth, strict=True))
    if not pairs:
        return 0.0
    return sum(1 for p, t in pairs if p is not None and iou(p, t) >= threshold) / len(pairs)


# ---------------------------------------------------------------------------------------------
# Drawing

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
           "#469990", "#800000", "#808000", "#000075"]


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans Bold, shipped in workbench/assets/fonts (no download, same look everywhere)."""
    path = resources.files("workbench") / "assets" / "fonts" / "DejaVuSans-Bold.ttf"
    with resources.as_file(path) as p:
        return ImageFont.truetype(str(p), size)


def draw(image: Image.Image, refs: Sequence[Ref] | str, coords: str = "norm_1000") -> Image.Image:
    """A copy of ``image`` with each ref's boxes drawn and labelled, one colour per ref.
    ``refs`` may be an answer's text, parsed here."""
    if isinstance(refs, str):
        refs = parse(refs).refs
    out = image.convert("RGB").copy()
    pen = ImageDraw.Draw(out)
    w, h = out.size
    line = max(2, round(min(w, h) / 200))
    text_font = font(max(10, round(min(w, h) / 30)))
    for i, ref in enumerate(refs):
        colour = PALETTE[i % len(PALETTE)]
        for box in ref.boxes:
            x1, y1, x2, y2 = convert(box, coords, "real", w, h)
            pen.rectangle([x1, y1, x2, y2], outline=colour, width=line)
            if ref.label:
                left, top, right, bottom = pen.textbbox((0, 0), ref.label, font=text_font)
                tw, th = right - left, bottom - top
                ty = y1 - th - 2 * line if y1 - th - 2 * line >= 0 else y1
                pen.rectangle([x1, ty, x1 + tw + 2 * line, ty + th + 2 * line], fill=colour)
                pen.text((x1 + line - left, ty + line - top), ref.label, fill="white", font=text_font)
    return out
