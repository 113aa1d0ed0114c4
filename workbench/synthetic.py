"""Synthetic grounding data: pictures of coloured shapes with exact boxes, and questions about them
in the dataset formats InternVL users already have.

Each image holds 1–4 shapes (kinds × colours × sizes) at random non-overlapping places on a plain or
tinted background, with optional clutter (thin grey lines and dots that are not objects). Question
kinds, each written the way users write them:

- ``find``:     caption → box. "Please provide the bounding box coordinate of the region this
                sentence describes: <ref>the red circle</ref>" → ``<ref>…</ref><box>[[…]]</box>``;
- ``find_all``: "Find all the circles." → one ref, several boxes;
- ``what``:     box → caption, in the ``objects`` + ``<bbox>`` / ``<ref-object>`` form (pixel
                boxes): "What is at <bbox>?" → ``<ref>the red circle</ref>``;
- ``describe``: "Describe the image." → "There are 3 shapes: a red circle, …" (left to right).

Captions are unique within an image: "the red circle", or "the small red circle" / "the large red
circle" when two shapes share colour and kind. Everything follows from the seed; the held-out split
uses a different stream, so no picture is in both.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from . import grounding

KINDS = ("circle", "square", "triangle", "star")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (235, 200, 30), "purple": (140, 60, 180), "orange": (245, 130, 20),
}
# A colour the demo model never sees: what the "new concept" LoRA teaches it.
NEW_COLOURS = {"pink": (255, 105, 180)}
FIND_PROMPT = grounding.PROMPT
QUESTION_KINDS = ("find", "find_all", "what", "describe")
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


@dataclass
class Shape:
    kind: str
    colour: str
    box: tuple[int, int, int, int]  # pixels, x1 y1 x2 y2
    caption: str = ""

    @property
    def size(self) -> int:
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


@dataclass
class SyntheticConfig:
    """What to generate. Defaults: the demo model's data."""

    samples: int = 1000
    seed: int = 0
    image_size: int = 448  # one tile of InternVL's 448-px geometry
    min_objects: int = 1
    max_objects: int = 4
    min_size: int = 48
    max_size: int = 160
    clutter: float = 0.3  # share of images with distractor lines and dots
    kinds: tuple[str, ...] = KINDS
    colours: tuple[str, ...] = tuple(COLOURS)
    questions: dict[str, float] = field(default_factory=lambda: {"find": 0.6, "find_all": 0.1, "what": 0.15,
                                                                  "describe": 0.15})
    require: str | None = None  # a colour every image must show at least once (new-concept data)
    focus: str | None = None  # find / what questions ask about a shape of this colour when there is one
    # Share of pictures of 2+ shapes built as hard cases: a second shape of the first one's kind in
    # another colour, and a third of its colour in another kind, so only colour AND kind together
    # single one out. The demo model's misses were mostly the right kind in the wrong colour.
    hard: float = 0.0


def palette(name: str) -> tuple[int, int, int]:
    return {**COLOURS, **NEW_COLOURS}[name]


# -- pictures ---------------------------------------------------------------------------------------

def layout(rng: random.Random, cfg: SyntheticConfig) -> list[Shape]:
    """Shapes at random places, none overlapping another (with a margin)."""
    n = rng.randint(cfg.min_objects, cfg.max_objects)
    shapes: list[Shape] = []
    seen: set[tuple[str, str]] = set()
    plan = _hard_plan(rng, cfg) if n >= 2 and cfg.hard and rng.random() < cfg.hard else []
    attempts = 0
    while len(shapes) < n and attempts < 500:
        attempts += 1
        if len(shapes) < len(plan):
            colour, kind = plan[len(shapes)]
        else:
            colour = cfg.require if (cfg.require and not shapes) else rng.choice(cfg.colours)
            kind = rng.choice(cfg.kinds)
        if (colour, kind) in seen and rng.random() < 0.85:
            continue  # a repeated colour+kind now and then, told apart by size
        side = rng.randint(cfg.min_size, cfg.max_size)
        x1 = rng.randint(4, cfg.image_size - side - 4)
        y1 = rng.randint(4, cfg.image_size - side - 4)
        box = (x1, y1, x1 + side, y1 + side)
        if any(_overlaps(box, s.box, margin=8) for s in shapes):
            continue
        shapes.append(Shape(kind, colour, box))
        seen.add((colour, kind))
    _caption(shapes)
    return shapes


def _hard_plan(rng: random.Random, cfg: SyntheticConfig) -> list[tuple[str, str]]:
    """(colour, kind) of the first shapes of a hard case: (c, k), (other colour, k), (c, other kind)."""
    colour = cfg.require or rng.choice(cfg.colours)
    kind = rng.choice(cfg.kinds)
    return [(colour, kind), (rng.choice([c for c in cfg.colours if c != colour]), kind),
            (colour, rng.choice([k for k in cfg.kinds if k != kind]))]


def _caption(shapes: list[Shape]) -> None:
    for s in shapes:
        twins = [t for t in shapes if (t.colour, t.kind) == (s.colour, s.kind)]
        if len(twins) == 1:
            s.caption = f"the {s.colour} {s.kind}"
        else:  # two of a kind: the smaller is "small", the other "large" (layout keeps sizes apart)
            s.caption = f"the {'small' if s.size == min(t.size for t in twins) else 'large'} {s.colour} {s.kind}"
    # Twins of equal size cannot be told apart: make the larger one clearly larger.
    for s in shapes:
        twins = [t for t in shapes if (t.colour, t.kind) == (s.colour, s.kind)]
        if len(twins) > 2 or (len(twins) == 2 and abs(twins[0].size - twins[1].size) < 24):
            for t in twins[1:]:
                shapes.remove(t)
            twins[0].caption = f"the {s.colour} {s.kind}"
            return _caption(shapes)


def render(shapes: list[Shape], rng: random.Random, cfg: SyntheticConfig):
    from PIL import Image, ImageDraw

    tint = rng.choice([(255, 255, 255), (245, 245, 240), (235, 240, 248), (248, 240, 232), (230, 230, 230)])
    image = Image.new("RGB", (cfg.image_size, cfg.image_size), tint)
    pen = ImageDraw.Draw(image)
    if rng.random() < cfg.clutter:
        for _ in range(rng.randint(3, 12)):
            grey = rng.randint(150, 210)
            a = (rng.randrange(cfg.image_size), rng.randrange(cfg.image_size))
            if rng.random() < 0.5:
                b = (rng.randrange(cfg.image_size), rng.randrange(cfg.image_size))
                pen.line([a, b], fill=(grey, grey, grey), width=1)
            else:
                pen.ellipse([a[0], a[1], a[0] + 4, a[1] + 4], fill=(grey, grey, grey))
    for s in shapes:
        _draw_shape(pen, s, palette(s.colour))
    return image


def _draw_shape(pen, s: Shape, rgb) -> None:
    x1, y1, x2, y2 = s.box
    if s.kind == "circle":
        pen.ellipse([x1, y1, x2 - 1, y2 - 1], fill=rgb)
    elif s.kind == "square":
        pen.rectangle([x1, y1, x2 - 1, y2 - 1], fill=rgb)
    elif s.kind == "triangle":
        pen.polygon([((x1 + x2) / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=rgb)
    elif s.kind == "star":  # five points touching the box's top, sides and bottom corners
        cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        ys = [p[1] for p in points]  # stretch vertically so the star fills its box
        lo, hi = min(ys), max(ys)
        points = [(px, y1 + (py - lo) / (hi - lo) * (y2 - 1 - y1)) for px, py in points]
        pen.polygon(points, fill=rgb)
    else:
        raise ValueError(f"unknown shape kind {s.kind!r}")


def _overlaps(a, b, margin: int = 0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


# -- questions --------------------------------------------------------------------------------------

def describe(shapes: list[Shape]) -> str:
    """The reference description: every shape, left to right."""
    ordered = sorted(shapes, key=lambda s: (s.box[0] + s.box[2], s.box[1]))
    names = [f"a {s.caption.removeprefix('the ')}" for s in ordered]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    count = NUMBERS.get(len(shapes), str(len(shapes)))
    return f"There {'is' if len(shapes) == 1 else 'are'} {count} shape{'s' * (len(shapes) > 1)}: {listed}."


def mentioned(text: str, palette_names=None) -> set[tuple[str, str]]:
    """The (colour, kind) pairs a description names, e.g. {("red", "circle")}."""
    colours = tuple(palette_names or (*COLOURS, *NEW_COLOURS))
    words = text.lower().replace(",", " ").replace(".", " ").split()
    found = set()
    for i, w in enumerate(words[:-1]):
        kind = words[i + 1].rstrip("s")
        if w in colours and kind in KINDS:
            found.add((w, kind))
    return found


def question(shapes: list[Shape], kind: str, rng: random.Random, size: int, focus: str | None = None) -> dict:
    """One sample (without its image path) of question ``kind`` about ``shapes`` (about a shape of
    colour ``focus`` when given and present)."""
    norm = {id(s): grounding.to_norm_1000(s.box, size, size) for s in shapes}
    pool = [s for s in shapes if s.colour == focus] or shapes
    if kind == "find":
        s = rng.choice(pool)
        return {"query": "<image>" + FIND_PROMPT + f"<ref>{s.caption}</ref>",
                "response": grounding.format_ref(s.caption, [norm[id(s)]]), "kind": kind, "caption": s.caption}
    if kind == "find_all":
        k = rng.choice([s.kind for s in shapes])
        same = sorted((s for s in shapes if s.kind == k), key=lambda s: (s.box[0], s.box[1]))
        label = f"{k}s" if len(same) > 1 else k
        return {"query": f"<image>Find all the {k}s.", "response": grounding.format_ref(label, [norm[id(s)] for s in same]),
                "kind": kind, "caption": k}
    if kind == "what":  # in the user-format placeholders: a pixel box in `objects`, the caption as answer
        s = rng.choice(pool)
        objects = [{"caption": s.caption, "bbox": list(s.box), "bbox_type": "real", "image": 0}]
        return {"query": "<image>What is at <bbox>?", "response": "<ref-object>", "objects": json.dumps(objects),
                "kind": kind, "caption": s.caption}
    if kind == "describe":
        return {"query": "<image>Describe the image.", "response": describe(shapes), "kind": kind, "caption": ""}
    raise ValueError(f"unknown question kind {kind!r}; kinds: {', '.join(QUESTION_KINDS)}")


# -- files ------------------------------------------------------------------------------------------

SHARD = 1000  # samples per random stream: the output depends on the seed, never on the worker count


def generate(folder: str | Path, cfg: SyntheticConfig | None = None, *, split: str = "train",
             kind: str | None = None, workers: int = 1) -> Path:
    """Write ``<folder>/<split>.jsonl`` and its images under ``<folder>/images/<split>/``; returns
    the jsonl path. ``kind`` fixes the question kind (evaluation sets); otherwise the mix in
    ``cfg.questions``. Each line also keeps its ``shapes`` (pixel boxes) for evaluation."""
    cfg = cfg or SyntheticConfig()
    folder = Path(folder)
    (folder / "images" / split).mkdir(parents=True, exist_ok=True)
    jobs = [(folder, cfg, split, kind, start, min(start + SHARD, cfg.samples)) for start in range(0, cfg.samples, SHARD)]
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_shard, jobs))
    else:
        parts = [_shard(job) for job in jobs]
    out = folder / f"{split}.jsonl"
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for part in parts for line in part))
    tmp.replace(out)  # a reader never sees half a file
    return out


def _shard(job) -> list[str]:
    folder, cfg, split, kind, start, end = job
    # One stream per split and shard: train and held-out pictures never coincide.
    rng = random.Random(f"{cfg.seed}:{split}:{start // SHARD}")
    kinds, weights = zip(*cfg.questions.items())
    lines = []
    for i in range(start, end):
        shapes = layout(rng, cfg)
        picture = render(shapes, rng, cfg)
        name = f"images/{split}/{i:06d}.png"
        picture.save(folder / name, compress_level=1)
        q = question(shapes, kind or rng.choices(kinds, weights)[0], rng, cfg.image_size, cfg.focus)
        q["images"] = [name]
        q["shapes"] = [{"caption": s.caption, "colour": s.colour, "kind": s.kind, "box": list(s.box)} for s in shapes]
        lines.append(json.dumps(q))
    return lines
