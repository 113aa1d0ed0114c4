"""Fine-tuning data in the formats InternVL users already have (../shared/reference/user-formats.md).

Reading turns every line into a :class:`Sample` — turns of (user, assistant) text with InternVL's
own grounding text, the images and videos it needs — or into :class:`Problem` s that name the file,
the line and what to fix. All problems of all files are collected before anything trains.

Accepted per line (json: a list of such objects; jsonl: one per line):

- ``query``/``response`` with optional ``history`` ([[q, r], ...]), ``images``, ``videos``, ``system``;
- ``messages`` ([{"role", "content"}]) with ``images``;
- images marked by ``<image>`` tags, inline ``<img>src</img>``, or put before the last query when
  untagged; paths and URLs relative to the dataset file;
- grounding ``objects``: a JSON string of [{caption, bbox, bbox_type, image}] or the newer
  {ref, bbox, bbox_type, image_id} dict, filling ``<ref-object>`` and ``<bbox>`` placeholders;
  boxes become ``<box>[[x1, y1, x2, y2]]</box>`` in 0–1000 of the image.

:func:`encode` turns a sample into model inputs with the loss on assistant turns only; a sample
longer than ``max_length`` loses the end of its text, never part of an image, and samples whose
images alone do not fit are left out and counted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from . import grounding, media
from .errors import UserInputError

_TAG = re.compile(r"<image>|<img>.*?</img>", re.S)
_INLINE = re.compile(r"<img>(.*?)</img>", re.S)
ROLES = {"system", "user", "assistant"}
_BBOX_TYPES = {"real": "real", "norm_1000": "norm_1000", "norm1000": "norm_1000", "norm_1": "norm_1", "norm1": "norm_1"}


@dataclass
class Problem:
    file: str
    line: int  # 1-based line of the sample in the file (a .json list: the line its object starts on)
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class Sample:
    turns: list[tuple[str, str]]  # (user, assistant); the user text has <image> where each image goes
    images: list[str] = field(default_factory=list)  # resolved paths or URLs, in <image> order
    videos: list[str] = field(default_factory=list)
    system: str | None = None
    file: str = ""
    line: int = 0

    @property
    def has_boxes(self) -> bool:
        return any("<box>" in a for _, a in self.turns)


class DataError(UserInputError):
    """The dataset has problems; ``problems`` lists every one of them."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} problem(s) in the dataset; fix them and run again:\n{shown}{more}")


# -- reading -------------------------------------------------------------------------------------

def read(paths: str | Path | Iterable[str | Path], *, check_images: bool = True,
         multi_turn_images: bool = True) -> tuple[list[Sample], list[Problem]]:
    """Read every file; returns (samples, problems). Nothing raises for bad lines."""
    if isinstance(paths, (str, Path)):
        paths = [p for p in str(paths).split(",") if p.strip()]
    samples: list[Sample] = []
    problems: list[Problem] = []
    for path in map(Path, paths):
        for line, raw, error in _records(path, problems):
            if error:
                problems.append(Problem(str(path), line, error))
                continue
            found: list[str] = []
            sample = _sample(raw, path, line, found, check_images, multi_turn_images)
            problems += [Problem(str(path), line, m) for m in found]
            if sample is not None and not found:
                samples.append(sample)
    return samples, problems


def load(paths, **kwargs) -> list[Sample]:
    """Read and raise :class:`DataError` with every problem if there is any."""
    samples, problems = read(paths, **kwargs)
    if problems:
        raise DataError(problems)
    if not samples:
        raise UserInputError(f"No samples in {paths}: the file(s) are empty.")
    return samples


def _records(path: Path, problems: list[Problem]):
    """(line, object, error) for each record of a .json or .jsonl file."""
    if not path.exists():
        problems.append(Problem(str(path), 0, "file not found. Check the path (relative to the working directory)."))
        return
    if path.suffix not in (".json", ".jsonl"):
        problems.append(Problem(str(path), 0, "unknown file type: use .json (a list of samples) or .jsonl (one per line)."))
        return
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield number, None, f"not valid JSON ({exc.msg} at column {exc.colno}). Fix the line's syntax."
        return
    # A .json list: decode item by item so each problem gets the line its item starts on.
    decoder = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] != "[":
        problems.append(Problem(str(path), 1, "a .json dataset must be a list of samples ([{...}, {...}]); "
                                              "for one sample per line use .jsonl."))
        return
    i = _skip_ws(text, i + 1)
    while i < len(text) and text[i] != "]":
        line = text.count("\n", 0, i) + 1
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            yield exc.lineno, None, f"not valid JSON ({exc.msg}). Fix the item's syntax."
            return
        yield line, obj, None
        i = _skip_ws(text, i)
        if i < len(text) and text[i] == ",":
            i = _skip_ws(text, i + 1)


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _sample(raw, path: Path, line: int, problems: list[str], check_images: bool, multi_turn_images: bool):
    if not isinstance(raw, dict):
        problems.append(f"expected a JSON object with query/response or messages, got {type(raw).__name__}.")
        return None
    system = raw.get("system")
    if "messages" in raw:
        turns, system = _from_messages(raw["messages"], problems, system)
    elif "query" in raw or "response" in raw:
        turns = _from_query(raw, problems)
    else:
        problems.append("no 'query'/'response' and no 'messages': write {\"query\": ..., \"response\": ...} "
                        "or {\"messages\": [{\"role\": \"user\", ...}, {\"role\": \"assistant\", ...}]}.")
        return None
    if turns is None:
        return None
    images = _str_list(raw.get("images"), "images", problems)
    videos = _str_list(raw.get("videos"), "videos", problems)
    if images is None or videos is None:
        return None
    base = path.parent

    # Inline <img>src</img> become <image> with their source in order; <image> tags take from `images`.
    given = iter(images)
    ordered: list[str] = []
    n_tags = sum(1 for u, _ in turns for m in _TAG.finditer(u) if m.group(0) == "<image>")
    if n_tags and n_tags != len(images):
        problems.append(f"{n_tags} <image> tag(s) but {len(images)} image(s) in 'images': give one image per tag, "
                        "or remove the tags to put all images before the last query.")
        return None
    new_turns = []
    for user, answer in turns:
        def swap(m):
            ordered.append(next(given) if m.group(0) == "<image>" else m.group(0)[5:-6].strip())
            return "<image>"
        new_turns.append((_TAG.sub(swap, user), answer))
    if not n_tags and images:
        prefix = "<image>\n" if len(images) == 1 else "".join(f"Image-{i + 1}: <image>\n" for i in range(len(images)))
        last_user, last_answer = new_turns[-1]
        new_turns[-1] = (prefix + last_user, last_answer)
        ordered = list(images) + ordered
    if not multi_turn_images and sum(1 for u, _ in new_turns if "<image>" in u) > 1:
        problems.append("images in more than one turn, which this model family (V1.5) was not trained for: "
                        "put all images in one turn.")
    resolved = [_resolve(src, base, problems, check_images) for src in ordered]
    videos = [_resolve(v, base, problems, check_images, kind="video") for v in videos]

    if "objects" in raw or any("<ref-object>" in t or "<bbox>" in t for pair in new_turns for t in pair):
        new_turns = _fill_objects(raw.get("objects"), new_turns, resolved, problems)
    for i, (user, answer) in enumerate(new_turns):
        if not answer.strip():
            problems.append(f"turn {i + 1} has an empty response: every turn needs the answer to learn.")
    if problems:
        return None
    return Sample(new_turns, resolved, videos, system, str(path), line)


def _from_query(raw: dict, problems: list[str]):
    query, response = raw.get("query"), raw.get("response")
    if not isinstance(query, str) or not isinstance(response, str):
        problems.append("'query' and 'response' must both be strings.")
        return None
    history = raw.get("history") or []
    turns = []
    if not isinstance(history, list) or not all(
            isinstance(h, (list, tuple)) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in history):
        problems.append("'history' must be a list of [query, response] string pairs.")
        return None
    turns += [(q, r) for q, r in history]
    turns.append((query, response))
    return turns


def _from_messages(messages, problems: list[str], system):
    if not isinstance(messages, list) or not messages:
        problems.append("'messages' must be a non-empty list of {\"role\", \"content\"}.")
        return None, system
    turns, pending = [], None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            problems.append(f"message {i + 1} needs a role of {sorted(ROLES)} and a content.")
            return None, system
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, {"type": "image"}]
            content = "".join(p.get("text", "") if p.get("type") == "text" else "<image>" for p in content
                              if isinstance(p, dict))
        if not isinstance(content, str):
            problems.append(f"message {i + 1}: content must be a string (or a list of text/image parts).")
            return None, system
        if m["role"] == "system":
            system = content
        elif m["role"] == "user":
            if pending is not None:
                problems.append(f"message {i + 1}: two user messages in a row; alternate user and assistant.")
                return None, system
            pending = content
        else:
            if pending is None:
                problems.append(f"message {i + 1}: an assistant message with no user message before it.")
                return None, system
            turns.append((pending, content))
            pending = None
    if pending is not None or not turns:
        problems.append("the last message must be the assistant's answer (there is nothing to learn otherwise).")
        return None, system
    return turns, system


def _str_list(value, name: str, problems: list[str]):
    if value is None:
        return []
    if isinstance(value, str):  # the command-line habit: comma-separated
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    problems.append(f"'{name}' must be a list of paths or URLs.")
    return None


def _resolve(src: str, base: Path, problems: list[str], check: bool, kind: str = "image") -> str:
    if media.is_url(src) or src.startswith("data:"):
        return src
    path = Path(src).expanduser()
    if not path.is_absolute():
        path = base / path
    if check and not path.is_file():
        problems.append(f"{kind} not found: {src} (looked at {path}). Paths are relative to the dataset file.")
    return str(path)


def _fill_objects(objects, turns, images: list[str], problems: list[str]):
    """Replace <ref-object> with <ref>caption</ref> and <bbox> with <box>[[...]]</box>, in order."""
    parsed = _parse_objects(objects, len(images), problems)
    if parsed is None:
        return turns
    refs = iter(parsed)
    boxes = iter(parsed)
    sizes: dict[int, tuple[int, int]] = {}

    def box_text(obj) -> str:
        caption, bxs, kind, index = obj
        if kind == "norm_1000":
            norm = bxs
        else:
            if kind == "real" and index not in sizes:
                sizes[index] = _image_size(images[index], problems)
            w, h = sizes.get(index, (1, 1))
            norm = [grounding.to_norm_1000(b, w, h) if kind == "real" else grounding.convert(b, kind, "norm_1000", 1, 1)
                    for b in bxs]
        return grounding.format_boxes([tuple(round(v) for v in b) for b in norm])

    def fill(text: str) -> str:
        out = []
        for piece in re.split(r"(<ref-object>|<bbox>)", text):
            try:
                if piece == "<ref-object>":
                    out.append(f"<ref>{next(refs)[0]}</ref>")
                elif piece == "<bbox>":
                    out.append(box_text(next(boxes)))
                else:
                    out.append(piece)
            except StopIteration:
                problems.append(f"more {piece} placeholders than objects ({len(parsed)}): add objects or remove placeholders.")
                return text
        return "".join(out)

    return [(fill(u), fill(a)) for u, a in turns]


def _parse_objects(objects, n_images: int, problems: list[str]):
    if objects is None:
        problems.append("<ref-object>/<bbox> placeholders but no 'objects': add objects with caption and bbox.")
        return None
    if isinstance(objects, str):
        try:
            objects = json.loads(objects)
        except json.JSONDecodeError as exc:
            problems.append(f"'objects' is not valid JSON ({exc.msg}); it is a string holding a JSON list.")
            return None
    if isinstance(objects, dict):  # the newer {ref: [...], bbox: [...], bbox_type, image_id: [...]} form
        refs, bbs = objects.get("ref") or [], objects.get("bbox") or []
        ids = objects.get("image_id") or [0] * len(bbs)
        kind = objects.get("bbox_type", "real")
        if refs and len(refs) != len(bbs):
            problems.append(f"'objects' has {len(refs)} ref(s) but {len(bbs)} bbox(es): give one box per ref.")
            return None
        objects = [{"caption": refs[i] if refs else "", "bbox": b, "bbox_type": kind, "image": ids[i] if i < len(ids) else 0}
                   for i, b in enumerate(bbs)]
    if not isinstance(objects, list):
        problems.append("'objects' must be a list of {caption, bbox, bbox_type, image}.")
        return None
    out = []
    for i, obj in enumerate(objects):
        where = f"object {i + 1}"
        if not isinstance(obj, dict):
            problems.append(f"{where} must be an object with caption, bbox, bbox_type, image.")
            continue
        kind = _BBOX_TYPES.get(str(obj.get("bbox_type", "real")))
        if kind is None:
            problems.append(f"{where}: bbox_type {obj.get('bbox_type')!r} is not one of real, norm_1000, norm_1.")
            continue
        bbox = obj.get("bbox")
        bxs = bbox if isinstance(bbox, list) and bbox and isinstance(bbox[0], list) else [bbox]
        if not all(isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b) for b in bxs):
            problems.append(f"{where}: bbox must be [x_min, y_min, x_max, y_max] or a list of such boxes, got {bbox!r}.")
            continue
        if any(b[2] < b[0] or b[3] < b[1] for b in bxs):
            problems.append(f"{where}: bbox {bbox} has x_max < x_min or y_max < y_min.")
            continue
        index = obj.get("image", 0)
        if not isinstance(index, int) or not 0 <= index < max(n_images, 1) or (kind == "real" and n_images == 0):
            problems.append(f"{where}: image index {index!r} but the sample has {n_images} image(s) (indices from 0).")
            continue
        out.append((str(obj.get("caption", "")), bxs, kind, index))
    return out if len(out) == len(objects) else None


def _image_size(src: str, problems: list[str]) -> tuple[int, int]:
    try:
        return media.load_image(src).size
    except UserInputError as exc:
        problems.append(str(exc))
        return (1, 1)


# -- encoding ------------------------------------------------------------------------------------

@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    pixel_values: object | None  # a tensor of tiles, or None for text-only samples
    truncated: bool = False


def render(sample: Sample, processor, default_system: str | None) -> list[tuple[str, bool]]:
    """The conversation as text pieces, each marked True where the model learns it (answers and
    their end-of-turn marker), with <image> already turned into the processor's placeholder."""
    messages = []
    system = sample.system if sample.system is not None else default_system
    if system:
        messages.append({"role": "system", "content": system})
    for user, answer in sample.turns:
        messages.append({"role": "user", "content": user.replace("<image>", "<IMG_CONTEXT>")})
        messages.append({"role": "assistant", "content": answer})
    text = processor.apply_chat_template(messages, tokenize=False)
    pieces, at = [], 0
    for _, answer in sample.turns:
        start = text.index(answer, at) if answer else at
        end = start + len(answer)
        marker = _end_marker(text, end)
        pieces += [(text[at:start], False), (text[start:end + len(marker)], True)]
        at = end + len(marker)
    if at < len(text):
        pieces.append((text[at:], False))
    return [(t, learn) for t, learn in pieces if t]


def _end_marker(text: str, end: int) -> str:
    for marker in ("<|im_end|>", "<|end|>", "<|eot_id|>"):
        if text.startswith(marker, end):
            return marker
    return ""


def encode(sample: Sample, processor, *, max_length: int, max_tiles: int, default_system: str | None = None,
           video_segments: int = 8) -> Encoded | None:
    """Token ids, labels (-100 outside answers) and pixel values; None if the images alone do not
    fit in ``max_length`` (the caller counts those)."""
    import torch

    images = iter(sample.images)
    videos = iter(sample.videos)
    ids: list[int] = []
    labels: list[int] = []
    pixels = []
    image_end = 0  # tokens up to the end of the last image block: never cut before this
    for text, learn in render(sample, processor, default_system):
        n_img = text.count("<IMG_CONTEXT>")
        n_vid = text.count("<video>")
        kwargs = {}
        if n_img:
            kwargs.update(images=[media.load_image(next(images)) for _ in range(n_img)], max_patches=max_tiles)
        if n_vid:
            kwargs["videos"] = [media.load_video(next(videos), video_segments) for _ in range(n_vid)]
        if kwargs:
            out = processor(text=[text], return_tensors="pt", **kwargs)
            pixels.append(out["pixel_values"])
            piece = out["input_ids"][0].tolist()
            image_end = len(ids) + len(piece) if not learn else image_end
        else:
            piece = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if learn else [-100] * len(piece)
    truncated = len(ids) > max_length
    if truncated:
        if image_end > max_length:
            return None
        ids, labels = ids[:max_length], labels[:max_length]
    if all(x == -100 for x in labels):
        return None
    return Encoded(ids, labels, torch.cat(pixels) if pixels else None, truncated)


# -- the report of `workbench data check` --------------------------------------------------------

@dataclass
class Report:
    samples: int = 0
    images: int = 0
    videos: int = 0
    grounding: int = 0
    tokens: int = 0
    tiles: int = 0
    longest: int = 0
    truncated: int = 0
    skipped: int = 0  # images alone longer than max_length
    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [str(p) for p in self.problems]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s): fix them before training.")
        lines.append(f"samples {self.samples} · images {self.images} · videos {self.videos} · with boxes "
                     f"{self.grounding} · tiles {self.tiles} · tokens {self.tokens} (longest {self.longest})")
        if self.truncated or self.skipped:
            lines.append(f"max length: {self.truncated} sample(s) will lose the end of their text; {self.skipped} "
                         "will be left out because their images alone are longer. Raise max_length or lower max_tiles.")
        return "\n".join(lines)


def check(paths, processor=None, *, max_length: int = 4096, max_tiles: int = 6, default_system: str | None = None,
          multi_turn_images: bool = True) -> Report:
    """Read (and, given a processor, encode) every sample; the report has all problems and counts."""
    samples, problems = read(paths, multi_turn_images=multi_turn_images)
    report = Report(samples=len(samples), problems=problems)
    for s in samples:
        report.images += len(s.images)
        report.videos += len(s.videos)
        report.grounding += s.has_boxes
        if processor is None:
            continue
        try:
            enc = encode(s, processor, max_length=max_length, max_tiles=max_tiles, default_system=default_system)
        except UserInputError as exc:
            report.problems.append(Problem(s.file, s.line, str(exc)))
            continue
        if enc is None:
            report.skipped += 1
            continue
        report.truncated += enc.truncated
        report.tokens += len(enc.input_ids)
        report.longest = max(report.longest, len(enc.input_ids))
        report.tiles += 0 if enc.pixel_values is None else int(enc.pixel_values.shape[0])
    return report
