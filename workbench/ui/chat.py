"""The chat panel: messages with markdown and thumbnails, a text box, images by upload, path or
URL, send that turns into stop while tokens stream, clear / undo / regenerate, and the grounding
overlay under every answer that has boxes.

Answers are produced on a worker thread (and the model runs on the process's generation thread),
so the kernel keeps serving the notebook — the stop button included — while the model talks.
Widget updates from that thread are plain trait assignments; ipykernel sends them on its
thread-safe IOPub channel.
"""

from __future__ import annotations

import html
import io
import re
import threading
import time

import ipywidgets as W
import traitlets
from markdown_it import MarkdownIt
from PIL import Image

from .. import grounding, media
from .. import session as sessions
from ..chat import Conversation, GenerationSettings, Turn
from ..errors import ConversationError, UserInputError, WorkbenchError
from .overlay_panel import display_copy, overlay

THUMB = 96  # px: thumbnail size in the message list
_MD = MarkdownIt("commonmark", {"html": False})  # html off: model output is shown, never executed
_REF_HTML = re.compile(r"&lt;ref&gt;(.*?)&lt;/ref&gt;(\s*&lt;box&gt;(.*?)&lt;/box&gt;)?", re.S)
_BOX_HTML = re.compile(r"&lt;box&gt;(.*?)&lt;/box&gt;", re.S)
# Plain ipywidgets carry no stylesheet of their own; this one travels with the panel.
STYLE = """<style>
.wb-chat-question { background: var(--jp-layout-color2, #f0f3f7); border-radius: 6px; padding: 0 8px; margin: 6px 0 2px 48px; }
.wb-chat-answer { border-left: 3px solid var(--jp-brand-color1, #1976d2); padding-left: 8px; margin: 2px 48px 6px 0; }
.wb-chat .wb-overlay-stage { max-width: 480px; }
.wb-stopped { color: var(--jp-ui-font-color2, #777); font-style: italic; }
.wb-cursor { color: var(--jp-brand-color1, #1976d2); }
</style>"""


def to_html(text: str) -> str:
    """Markdown to HTML with raw HTML escaped; ``<ref>``/``<box>`` become coloured labels."""
    body = _MD.render(text)
    order: list[str] = []

    def ref(m: re.Match) -> str:
        label = m.group(1)
        if label not in order:
            order.append(label)
        color = grounding.PALETTE[order.index(label) % len(grounding.PALETTE)]
        box = f' <code class="wb-box-text">{m.group(3)}</code>' if m.group(2) else ""
        return f'<span class="wb-ref" style="border-bottom: 2px solid {color}">{label}</span>{box}'

    body = _REF_HTML.sub(ref, body)
    return _BOX_HTML.sub(lambda m: f'<code class="wb-box-text">{m.group(1)}</code>', body)


def thumbnail(image: Image.Image, size: int = THUMB) -> W.Image:
    copy = image.copy()
    copy.thumbnail((size, size))
    buf = io.BytesIO()
    copy.save(buf, format="PNG")
    return W.Image(value=buf.getvalue(), format="png", width=copy.width, height=copy.height,
                   layout=W.Layout(width=f"{copy.width}px", height=f"{copy.height}px", margin="2px"))


class ChatPanel(W.VBox):
    """Chat with a loaded model. ``session``: a Session, a session name, or None for the most
    recently loaded one at the time of sending."""

    busy = traitlets.Bool(False).tag(sync=False)
    error = traitlets.Unicode("")  # the message shown in the status line, "" when none

    def __init__(self, session=None, *, system: str | None = None, settings: GenerationSettings | None = None):
        self._wanted = session
        self._system = system
        self.conversation: Conversation | None = None
        self.attachments: list[tuple[str, Image.Image]] = []
        self._worker: threading.Thread | None = None
        self._turn_views: list[W.VBox] = []
        defaults = settings or GenerationSettings()

        self.messages = W.VBox(layout=W.Layout(max_height="560px", overflow="auto"))
        self.messages.add_class("wb-chat-messages")
        self.input = W.Textarea(placeholder="Ask about an image… (<image> marks where an attached image goes)",
                                layout=W.Layout(width="100%", height="64px"))
        self.input.add_class("wb-chat-input")
        self.send_button = W.Button(description="Send", icon="paper-plane", button_style="primary")
        self.send_button.add_class("wb-chat-send")
        self.clear_button = W.Button(description="Clear", icon="trash")
        self.undo_button = W.Button(description="Undo", icon="undo")
        self.regenerate_button = W.Button(description="Regenerate", icon="refresh")
        self.upload = W.FileUpload(accept="image/*", multiple=True, description="Upload")
        self.source = W.Text(placeholder="image path or http(s) URL", layout=W.Layout(width="320px"))
        self.source.add_class("wb-chat-source")
        self.attach_button = W.Button(description="Attach", icon="paperclip")
        self.attached = W.HBox()
        self.attached.add_class("wb-chat-attachments")
        self.status = W.HTML()
        self.status.add_class("wb-chat-status")
        self.max_new_tokens = W.BoundedIntText(value=defaults.max_new_tokens, min=1, max=32768, description="max new tokens",
                                               style={"description_width": "110px"})
        self.max_new_tokens.add_class("wb-chat-max-new-tokens")
        self.temperature = W.BoundedFloatText(value=defaults.temperature, min=0.0, max=5.0, step=0.1,
                                              description="temperature", style={"description_width": "110px"})
        self.top_p = W.BoundedFloatText(value=defaults.top_p, min=0.01, max=1.0, step=0.05, description="top p",
                                        style={"description_width": "110px"})
        from .. import tracing

        # The one toggle for MLflow traces of chat turns; the choice lasts (workbench home settings).
        self.trace_toggle = W.Checkbox(value=tracing.enabled(), description="record turns as MLflow traces",
                                       indent=False)
        self.trace_toggle.add_class("wb-chat-trace")
        self.trace_toggle.observe(lambda change: tracing.enable(change["new"]), names="value")
        settings_box = W.Accordion([W.VBox([self.max_new_tokens, self.temperature, self.top_p, self.trace_toggle])],
                                   titles=("Generation settings",), selected_index=None)

        self.send_button.on_click(lambda _: self.stop() if self.busy else self.send())
        self.clear_button.on_click(lambda _: self.clear())
        self.undo_button.on_click(lambda _: self.undo())
        self.regenerate_button.on_click(lambda _: self.regenerate())
        self.attach_button.on_click(lambda _: self.attach(self.source.value))
        self.upload.observe(self._on_upload, names="value")

        super().__init__([
            W.HTML(STYLE),
            self.messages,
            self.attached,
            self.input,
            W.HBox([self.send_button, self.clear_button, self.undo_button, self.regenerate_button]),
            W.HBox([self.upload, self.source, self.attach_button]),
            settings_box,
            self.status,
        ])
        self.add_class("wb-chat")

    # -- verbs (each button calls one; notebooks and tests may call them directly) ---------------

    def send(self, text: str | None = None, images=()) -> None:
        """Ask ``text`` (default: the text box) with the attached images plus ``images``; returns
        at once while the answer streams into the panel. ``wait()`` blocks until it is done."""
        if self.busy:
            return self._fail(ConversationError("An answer is still streaming: press Stop or wait for it."))
        text = self.input.value if text is None else text
        images = [im for _, im in self.attachments] + list(images)
        self._start(lambda conv: conv.stream(text, images, **self._settings()), text=text, images=images,
                    on_start=self._sent)

    def stop(self) -> None:
        """Stop the answer being streamed; the text so far is kept (marked as stopped)."""
        if self.conversation is not None:
            self.conversation.stop()

    def clear(self) -> None:
        if self._guard_busy():
            return
        if self.conversation is not None:
            self.conversation.clear()
        self._turn_views.clear()
        self.messages.children = ()
        self._say("")

    def undo(self) -> None:
        if self._guard_busy():
            return
        try:
            if self.conversation is None:
                raise ConversationError("Nothing to undo: the conversation is empty.")
            self.conversation.undo()
        except WorkbenchError as exc:
            return self._fail(exc)
        self._turn_views.pop()
        self.messages.children = tuple(self._turn_views)
        self._say("")

    def regenerate(self) -> None:
        """Answer the last question again (same images), replacing its answer."""
        if self._guard_busy():
            return
        if self.conversation is None or not self.conversation.turns:
            return self._fail(ConversationError("Nothing to regenerate: the conversation is empty."))
        self._start(lambda conv: conv.regenerate(**self._settings()), replace_last=True)

    def attach(self, source) -> None:
        """Attach an image by path, URL, bytes or PIL image (loaded on a worker thread, so a slow
        URL does not block the kernel)."""
        if not source or (isinstance(source, str) and not source.strip()):
            return self._fail(UserInputError("Type an image path or an http(s) URL first, then press Attach."))

        self._say(f"Loading {html.escape(media.describe(source))}…")

        def work():
            try:
                image = media.load_image(source)
            except WorkbenchError as exc:
                return self._fail(exc)
            self._add_attachment(media.describe(source), image)
            if isinstance(source, str) and source == self.source.value:
                self.source.value = ""

        threading.Thread(target=work, daemon=True, name="workbench-attach").start()

    def use(self, session) -> None:
        """Chat with ``session`` from now on (a new conversation)."""
        self._wanted = session
        self.conversation = None
        self._say(f"Now chatting with <b>{html.escape(getattr(session, 'name', str(session)))}</b>.")

    def wait(self, timeout: float | None = None) -> Turn | None:
        """Block until the current answer is finished; returns the last turn."""
        if self._worker is not None:
            self._worker.join(timeout)
        return self.conversation.turns[-1] if self.conversation and self.conversation.turns else None

    @property
    def last_answer(self) -> str:
        turn = self.wait(0)
        return turn.answer if turn else ""

    # -- internals -------------------------------------------------------------------------------

    def _settings(self) -> dict:
        return dict(max_new_tokens=self.max_new_tokens.value, temperature=self.temperature.value, top_p=self.top_p.value)

    def _session(self):
        wanted = self._wanted
        loaded = sessions.sessions()
        if isinstance(wanted, str):
            return sessions.get(wanted)
        if wanted is not None:
            if wanted.name not in loaded or loaded[wanted.name] is not wanted:
                raise UserInputError(f"The model session {wanted.name!r} was unloaded. Load a model in the Model "
                                     "panel (or with workbench.load()) and chat again.")
            return wanted
        if not loaded:
            raise UserInputError("No model is loaded. Load one in the Model panel, or run workbench.load() "
                                 "(the default is the offline demo model).")
        return list(loaded.values())[-1]

    def _conversation(self) -> Conversation:
        session = self._session()
        if self.conversation is None or self.conversation.session is not session:
            if self.conversation is not None and self.conversation.turns:
                self._turn_views.clear()
                self.messages.children = ()
            self.conversation = Conversation(session, system=self._system)
        return self.conversation

    def _start(self, make_stream, *, text: str = "", images=(), on_start=None, replace_last: bool = False) -> None:
        """Open the stream on a worker thread and pump it into a new assistant message."""
        self.busy = True
        self._say("")

        def work():
            try:
                try:
                    conv = self._conversation()
                    stream = make_stream(conv)
                except WorkbenchError as exc:
                    return self._fail(exc)
                if on_start:
                    on_start()
                if replace_last:  # regenerate: keep the question's view, drop its old answer
                    user = self._turn_views.pop().children[0]
                else:
                    user = self._user_view(text, [im for im in images if isinstance(im, Image.Image)])
                answer = W.HTML(layout=W.Layout(width="100%"))
                answer.add_class("wb-chat-answer")
                view = W.VBox([user, answer])
                view.add_class("wb-chat-turn")
                self._turn_views.append(view)
                self.messages.children = tuple(self._turn_views)
                self._pump(stream, conv, view, answer)
            finally:
                self.busy = False

        self._worker = threading.Thread(target=work, daemon=True, name="workbench-chat")
        self._worker.start()

    def _pump(self, stream, conv: Conversation, view: W.VBox, answer: W.HTML) -> None:
        text, shown = "", 0.0
        try:
            for delta in stream:
                text += delta
                if time.monotonic() - shown > 0.05:  # at most ~20 redraws a second
                    answer.value = to_html(text) + '<span class="wb-cursor">▍</span>'
                    shown = time.monotonic()
        except WorkbenchError as exc:
            self._turn_views.remove(view)
            self.messages.children = tuple(self._turn_views)
            return self._fail(exc)
        except Exception as exc:  # a model error: show it, keep the kernel and the panel usable
            self._turn_views.remove(view)
            self.messages.children = tuple(self._turn_views)
            return self._fail(exc, prefix="The model failed: ")
        turn = conv.turns[-1]
        note = ' <span class="wb-stopped">(stopped)</span>' if turn.stopped else ""
        answer.value = to_html(turn.answer) + note
        if turn.images:  # inline <img> sources were loaded by the conversation: show them all
            view.children[0].children = (view.children[0].children[0], W.HBox([thumbnail(im) for im in turn.images]))
        image = conv.image_for(turn)
        if turn.grounding.refs and image is not None:
            view.children = (*view.children, overlay(image, turn.answer))
        answer.add_class("wb-chat-done")

    def _sent(self) -> None:
        self.input.value = ""
        self.attachments.clear()
        self.attached.children = ()

    def _user_view(self, text: str, images: list) -> W.VBox:
        question = W.HTML(to_html(text))
        question.add_class("wb-chat-question")
        return W.VBox([question, W.HBox([thumbnail(im) for im in images])])

    def _add_attachment(self, name: str, image: Image.Image) -> None:
        self.attachments.append((name, image))
        self.attached.children = tuple(thumbnail(im, 64) for _, im in self.attachments)
        shown = display_copy(image)
        note = (f" ({image.width}×{image.height}; shown downscaled, the model gets the original)"
                if shown is not image else "")
        self._say(f"Attached {html.escape(name)}{note}.")

    def _on_upload(self, change) -> None:
        files = change["new"]
        if not files:
            return
        problems = []
        for f in files:
            try:
                self._add_attachment(f["name"], media.load_image(bytes(f["content"])))
            except WorkbenchError as exc:
                problems.append(f"{f['name']}: {exc}")
        self.upload.value = ()
        if problems:
            self._fail(UserInputError(" ".join(problems)))

    def _guard_busy(self) -> bool:
        if self.busy:
            self._fail(ConversationError("An answer is still streaming: press Stop first."))
        return self.busy

    def _fail(self, exc: BaseException, prefix: str = "") -> None:
        self.error = f"{prefix}{exc}"
        self.status.value = f'<span class="wb-error" style="color: #c0392b">⚠ {html.escape(self.error)}</span>'

    def _say(self, message_html: str) -> None:
        self.error = ""
        self.status.value = message_html

    @traitlets.observe("busy")
    def _on_busy(self, change) -> None:
        self.send_button.description = "Stop" if change["new"] else "Send"
        self.send_button.icon = "stop" if change["new"] else "paper-plane"
        self.send_button.button_style = "danger" if change["new"] else "primary"
