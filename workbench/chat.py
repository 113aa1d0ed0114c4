"""Conversations with a loaded model: several images per turn and across turns, video, streaming
with a stop, undo, regenerate.

How images get into the prompt (the rules InternVL users know):

- ``<image>`` in the text marks where an image goes, filled from ``images`` in order;
- ``<img>path-or-url</img>`` inline marks an image and its place at once;
- with no ``<image>`` tag, the given images go before the question (``<image>\\n``, or
  ``Image-1: <image>\\nImage-2: <image>\\n`` for several), as InternVL's chat code does;
- a video becomes ``<video>``, which the processor expands to ``Frame1: <img>…</img>`` lines, one
  448-px tile per frame.

Generation runs in a worker thread and streams text deltas; ``stop()`` (from any thread) ends it
early and the partial answer is kept as the turn's answer, marked ``stopped``. Answers keep
``<ref>``/``<box>``. Every finished turn goes through :meth:`Conversation._record`, the one place
where turns are logged (and where hooks such as MLflow tracing attach).
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image

from . import decode, grounding, media
from .errors import ConversationError, UserInputError
from .paths import subdir
from .session import run_in_generation_thread

_INLINE_IMG = re.compile(r"<img>(.*?)</img>", re.S)
_PLACEHOLDER = re.compile(r"<image>|<img>.*?</img>", re.S)

# Called with (conversation, turn) after every finished turn. Integrations append here.
TURN_HOOKS: list[Callable[["Conversation", "Turn"], None]] = []


@dataclass
class GenerationSettings:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 means greedy decoding
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def updated(self, **changes) -> "GenerationSettings":
        unknown = set(changes) - set(asdict(self))
        if unknown:
            raise UserInputError(f"Unknown generation setting(s) {sorted(unknown)}: use {', '.join(asdict(self))}.")
        new = GenerationSettings(**{**asdict(self), **{k: v for k, v in changes.items() if v is not None}})
        new.check()
        return new

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise UserInputError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if self.temperature < 0:
            raise UserInputError(f"temperature must be ≥ 0 (0 = greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise UserInputError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.repetition_penalty <= 0:
            raise UserInputError(f"repetition_penalty must be > 0, got {self.repetition_penalty}.")


@dataclass
class Turn:
    question: str  # as the user wrote it
    prompt_text: str  # rendered for the template (<IMG_CONTEXT> / <video> placeholders)
    images: list[Image.Image] = field(default_factory=list)
    image_sources: list[str] = field(default_factory=list)
    videos: list[list[Image.Image]] = field(default_factory=list)
    answer: str = ""
    stopped: bool = False
    prompt_tokens: int = 0
    answer_tokens: int = 0
    seconds: float = 0.0
    first_token_s: float | None = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)

    @property
    def grounding(self) -> grounding.Parsed:
        return grounding.parse(self.answer)


class Conversation:
    """A multi-turn chat on a :class:`workbench.session.Session`."""

    def __init__(self, session, *, system: str | None = None, settings: GenerationSettings | None = None,
                 log: bool = True, trace: bool | None = None, max_tiles: int | None = None, video_segments: int = 8):
        self.session = session
        self.system = system if system is not None else (session.spec.system_prompt if session.spec else None)
        self.settings = settings or GenerationSettings()
        self.settings.check()
        self.log = log
        self.trace = trace  # an MLflow trace per turn; None: the user's lasting choice (workbench.tracing)
        self.max_tiles = max_tiles or session.max_tiles
        self.video_segments = video_segments
        self.turns: list[Turn] = []
        self._stop = threading.Event()
        self._busy = threading.Lock()

    # -- public verbs ---------------------------------------------------------------------------

    def ask(self, text: str, images: Sequence[media.ImageSource] = (), videos: Sequence[str] = (), **settings) -> str:
        """Ask and wait for the whole answer."""
        for _ in self.stream(text, images, videos, **settings):
            pass
        return self.turns[-1].answer

    def stream(self, text: str, images: Sequence[media.ImageSource] = (), videos: Sequence[str] = (),
               **settings) -> Iterator[str]:
        """Ask and yield the answer as text deltas. The turn is recorded when the generator ends
        (finished, stopped, or closed by the caller)."""
        turn = self._prepare(text, list(images), list(videos), self.settings.updated(**settings))
        return self._generate(turn)

    def stop(self) -> None:
        """End the answer being generated (safe from any thread); its text so far is kept."""
        self._stop.set()

    def undo(self) -> Turn:
        """Forget the last turn (question and answer)."""
        if not self.turns:
            raise ConversationError("Nothing to undo: the conversation is empty.")
        return self.turns.pop()

    def regenerate(self, **settings) -> Iterator[str]:
        """Ask the last question again (same images), replacing its answer."""
        if not self.turns:
            raise ConversationError("Nothing to regenerate: the conversation is empty.")
        last = self.turns.pop()
        turn = Turn(last.question, last.prompt_text, last.images, last.image_sources, last.videos,
                    settings=self.settings.updated(**settings))
        return self._generate(turn)

    def clear(self) -> None:
        self.turns.clear()

    def image_for(self, turn: Turn | None = None) -> Image.Image | None:
        """The image a turn's question was about: its own last image, else the latest one before it."""
        turn = turn or (self.turns[-1] if self.turns else None)
        if turn is None:
            return None
        upto = self.turns.index(turn) + 1 if turn in self.turns else len(self.turns)
        for t in [turn, *reversed(self.turns[:upto])]:
            if t.images:
                return t.images[-1]
        return None

    # -- building the prompt --------------------------------------------------------------------

    def _prepare(self, text: str, images: list, videos: list, settings: GenerationSettings) -> Turn:
        if not isinstance(text, str) or not text.strip():
            raise ConversationError("The question is empty: type some text (images alone need a question too).")
        spec = self.session.spec
        order = _placeholders(text)
        n_tags = sum(1 for kind, _ in order if kind == "tag")
        if n_tags and n_tags != len(images):
            raise ConversationError(
                f"The text has {n_tags} <image> tag(s) but {len(images)} image(s) were given: "
                "give one image per <image> tag, or remove the tags to put all images before the question."
            )
        sources: list = []
        it = iter(images)
        rendered = _PLACEHOLDER.sub(lambda m: "<IMG_CONTEXT>", text)
        for kind, value in order:
            sources.append(next(it) if kind == "tag" else value)
        if not n_tags and images:
            sep = spec.image_sep if spec is not None else "\n"
            prefix = "<IMG_CONTEXT>" + sep if len(images) == 1 else "".join(
                f"Image-{i + 1}: <IMG_CONTEXT>\n" for i in range(len(images)))
            rendered = prefix + rendered
            sources = list(images) + sources
        loaded = [media.load_image(s) for s in sources]
        frames = [media.load_video(v, self.video_segments) for v in videos]
        if frames:
            if spec is not None and not spec.video:
                raise ConversationError(f"{spec.name} was not trained on video; use an InternVL2 or later model.")
            if "<video>" not in rendered:
                rendered = "<video>\n" * len(frames) + rendered
        if spec is not None and not spec.multi_turn_images and (loaded or frames):
            earlier = [i for i, t in enumerate(self.turns) if t.images or t.videos]
            if earlier:
                raise ConversationError(
                    f"{spec.name} ({spec.family}) takes images in one turn only, and turn {earlier[0] + 1} already "
                    "has images. Start a new conversation (clear()) to ask about another image, "
                    "or use an InternVL2 or later model."
                )
        return Turn(text, rendered, loaded, [media.describe(s) for s in sources], frames, settings=settings)

    def _inputs(self, turn: Turn):
        messages = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        for t in [*self.turns, turn]:
            messages.append({"role": "user", "content": t.prompt_text})
            if t is not turn:
                messages.append({"role": "assistant", "content": t.answer})
        processor = self.session.processor
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        images = [im for t in [*self.turns, turn] for im in t.images]
        videos = [v for t in [*self.turns, turn] for v in t.videos]
        kwargs = {}
        if images:
            kwargs["images"] = images
            kwargs["max_patches"] = self.max_tiles
            if self.session.input_device.type == "cuda":  # resize and normalise the tiles on the GPU
                kwargs["device"] = self.session.input_device
        if videos:
            kwargs["videos"] = videos
        inputs = processor(text=[prompt], return_tensors="pt", **kwargs)
        limit = getattr(self.session.model.config.get_text_config(), "max_position_embeddings", None)
        n = inputs["input_ids"].shape[1]
        if limit and n + turn.settings.max_new_tokens > limit:
            raise ConversationError(
                f"The prompt is {n} tokens and the answer may take {turn.settings.max_new_tokens}, over the model's "
                f"{limit}-token context. Clear the conversation, use fewer tiles (max_tiles), or fewer images."
            )
        device = self.session.input_device
        dtype = self.session.dtype
        return {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device)) for k, v in inputs.items()}

    # -- generation ---------------------------------------------------------------------------

    def _generate(self, turn: Turn) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        if not self._busy.acquire(blocking=False):
            raise ConversationError("This conversation is already answering; stop() it or wait for the answer.")
        try:
            inputs = self._inputs(turn)
        except BaseException:
            self._busy.release()
            raise
        tokenizer = self.session.tokenizer
        self._stop.clear()
        stop_event = self._stop

        class _UntilStopped(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop_event.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = _token_streamer()(tokenizer, skip_prompt=True, skip_special_tokens=False)
        s = turn.settings
        sampling = dict(do_sample=True, temperature=s.temperature, top_p=s.top_p) if s.temperature > 0 else dict(do_sample=False)
        decoder = decode.for_session(self.session)
        result: dict = {}

        def work():
            try:
                if s.seed is not None:
                    torch.manual_seed(s.seed)
                if decoder is not None:
                    streamer.put(inputs["input_ids"][0])  # skipped as the prompt, as generate does
                    result["ids"] = decoder.generate(inputs, max_new_tokens=s.max_new_tokens, stop_ids=_stop_ids(tokenizer),
                                                     stop_event=stop_event, on_token=lambda t: streamer.put(t[0]),
                                                     repetition_penalty=s.repetition_penalty, **sampling)
                    streamer.end()
                    return
                gen = dict(inputs, streamer=streamer, stopping_criteria=StoppingCriteriaList([_UntilStopped()]),
                           max_new_tokens=s.max_new_tokens, repetition_penalty=s.repetition_penalty,
                           eos_token_id=_stop_ids(tokenizer), pad_token_id=tokenizer.pad_token_id, **sampling)
                with torch.inference_mode():
                    result["ids"] = self.session.model.generate(**gen)
            except BaseException as exc:  # surfaced in the caller's thread below
                result["error"] = exc
                streamer.end()

        turn.prompt_tokens = int(inputs["input_ids"].shape[1])
        return self._pump(turn, work, streamer, result)

    def _pump(self, turn: Turn, work: Callable[[], None], streamer, result: dict) -> Iterator[str]:
        stop_strings = _stop_strings(self.session.tokenizer)
        start = time.perf_counter()
        done = run_in_generation_thread(work)
        pieces: list[str] = []
        ended = exhausted = False
        try:
            for delta in streamer:
                if ended:
                    continue
                cut = min((delta.find(x) for x in stop_strings if x in delta), default=-1)
                if cut >= 0:
                    delta, ended = delta[:cut], True
                if delta:
                    if turn.first_token_s is None:
                        turn.first_token_s = time.perf_counter() - start
                    pieces.append(delta)
                    yield delta
            exhausted = True
        finally:
            # Reached on normal end, on stop(), and when the caller closes the generator early.
            if not exhausted:
                self._stop.set()
                for _ in streamer:  # drain until the worker's end-of-stream so it can finish
                    pass
            done.result()
            self._busy.release()
            error = result.get("error")
            if error is None:
                turn.answer = "".join(pieces)
                turn.stopped = self._stop.is_set()
                ids = result.get("ids")
                turn.answer_tokens = int(ids.shape[1] - turn.prompt_tokens) if ids is not None else len(pieces)
                turn.seconds = time.perf_counter() - start
                self._record(turn)
        if error is not None:
            raise error

    # -- the one place turns are recorded -------------------------------------------------------

    def _record(self, turn: Turn) -> None:
        self.turns.append(turn)
        if self.log:
            entry = {
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "session": self.session.name, "model": self.session.source, "adapter": self.session.adapter,
                "question": turn.question, "images": turn.image_sources, "videos": len(turn.videos),
                "answer": turn.answer, "stopped": turn.stopped, "boxes": [[r.label, r.boxes] for r in turn.grounding.refs],
                "prompt_tokens": turn.prompt_tokens, "answer_tokens": turn.answer_tokens,
                "seconds": round(turn.seconds, 4), "settings": asdict(turn.settings),
            }
            with open(subdir("logs") / "chat.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        from . import tracing

        if self.trace or (self.trace is None and tracing.enabled()):
            tracing.record(self, turn)
        for hook in TURN_HOOKS:
            hook(self, turn)


def _placeholders(text: str) -> list[tuple[str, str]]:
    """In order: ("tag", "") for each <image>, ("inline", src) for each <img>src</img>."""
    return [("inline", m.group(0)[5:-6].strip()) if m.group(0).startswith("<img>") else ("tag", "")
            for m in _PLACEHOLDER.finditer(text)]


def _stop_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for marker in ("<|im_end|>", "<|end|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def _stop_strings(tokenizer) -> list[str]:
    return [tokenizer.convert_ids_to_tokens(i) for i in _stop_ids(tokenizer)] + (
        [tokenizer.pad_token] if tokenizer.pad_token else [])


@functools.cache
def _token_streamer():
    """transformers' ``TextIteratorStreamer`` with each token's text passed on as soon as it
    decodes. Its own ``put`` holds text back until a word ends (it was written for a terminal),
    which delays the first text of an answer by a token or more; here only an unfinished
    character (a byte token still waiting for the rest, decoded as U+FFFD) waits."""
    from transformers import TextIteratorStreamer

    class TokenStreamer(TextIteratorStreamer):
        def put(self, value):
            if len(value.shape) > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            if text.endswith("\ufffd"):
                return
            piece, self.print_len = text[self.print_len:], len(text)
            if text.endswith("\n"):  # start the cache again, from the last token (as transformers does)
                self.token_cache = self.token_cache[-1:]
                self.print_len = len(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
            if piece:
                self.on_finalized_text(piece)

    return TokenStreamer
