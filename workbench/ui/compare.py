"""The compare panel: fine-tune checkpoints with their evaluation (table, and metric-vs-step plots),
filtered by experiment; pick two (or the base model and one) for A/B chat — the same question and
image to both, answers side by side, each with its box overlay — and a link to MLflow's compare
view of their runs. Loading and answering run on a worker thread; the panel says what it is doing
in ``state`` and any failure in ``error`` (the traits tests read).
"""

from __future__ import annotations

import html
import io
import threading

import ipywidgets as W
import traitlets

from .. import compare, media
from ..errors import WorkbenchError
from .chat import to_html
from .common import error_html
from .overlay_panel import overlay

ALL = "(all experiments)"


class ComparePanel(W.VBox):
    state = traitlets.Unicode("idle")  # idle / loading / answering
    error = traitlets.Unicode("")
    answer_a = traitlets.Unicode("")
    answer_b = traitlets.Unicode("")
    mlflow_link = traitlets.Unicode("")

    def __init__(self, *, mlflow_base: str | None = None, refresh: bool = True):
        # Where the MLflow UI is: through Jupyter's proxy ("../mlflow/", relative to the lab page)
        # when running in JupyterLab with the workbench installed; a tracking server's own address otherwise.
        self.mlflow_base = mlflow_base if mlflow_base is not None else _default_mlflow_base()
        self.experiment = W.Dropdown(options=[ALL], value=ALL, description="experiment")
        self.refresh_button = W.Button(description="Refresh", icon="refresh")
        self.table = W.HTML()
        self.table.add_class("wb-compare-table")
        self.plot = W.Image(format="png", layout=W.Layout(width="640px"))
        self.plot.add_class("wb-compare-plot")
        self.pick_a = W.Dropdown(options=[], description="A")
        self.pick_b = W.Dropdown(options=[], description="B")
        self.load_button = W.Button(description="Load A and B", icon="upload", button_style="primary")
        self.memory = W.HTML()
        self.memory.add_class("wb-compare-memory")
        self.question = W.Text(placeholder="Question for both, e.g. Describe the image.", layout=W.Layout(width="60%"))
        self.image_path = W.Text(placeholder="image path or URL (optional)", layout=W.Layout(width="38%"))
        self.ask_button = W.Button(description="Ask both", icon="comments", disabled=True)
        self.side_a, self.side_b = W.VBox(), W.VBox()
        for box, name in ((self.side_a, "a"), (self.side_b, "b")):
            box.add_class("wb-compare-side")
            box.add_class(f"wb-compare-{name}")
            box.layout = W.Layout(width="49%", border="1px solid #ddd", padding="4px")
        self.link = W.HTML()
        self.link.add_class("wb-compare-link")
        self.message = W.HTML()
        self.message.add_class("wb-compare-message")
        for widget, name in ((self.pick_a, "pick-a"), (self.pick_b, "pick-b"), (self.load_button, "load"),
                             (self.question, "question"), (self.image_path, "image"), (self.ask_button, "ask")):
            widget.add_class(f"wb-compare-{name}")  # what the browser test finds
        self.pair: compare.Pair | None = None
        self._found: list[compare.Checkpoint] = []

        self.experiment.observe(lambda _: self.refresh(), names="value")
        self.refresh_button.on_click(lambda _: self.refresh(experiments=True))
        self.load_button.on_click(lambda _: self._in_background(self.load))
        self.ask_button.on_click(lambda _: self._in_background(self.ask))
        super().__init__([
            W.HBox([self.experiment, self.refresh_button]), self.table, self.plot,
            W.HBox([self.pick_a, self.pick_b, self.load_button]), self.memory,
            W.HBox([self.question, self.image_path]), W.HBox([self.ask_button, self.link]),
            W.HBox([self.side_a, self.side_b], layout=W.Layout(justify_content="space-between")), self.message,
        ])
        self.add_class("wb-compare")
        if refresh:  # the app's Compare tab refreshes when first opened instead
            self.refresh(experiments=True)

    # -- the checkpoints ------------------------------------------------------------------------

    def refresh(self, experiments: bool = False) -> None:
        try:
            if experiments:
                current = self.experiment.value
                self.experiment.options = [ALL, *compare.experiments()]
                self.experiment.value = current if current in self.experiment.options else ALL
            chosen = None if self.experiment.value == ALL else self.experiment.value
            self._found = compare.checkpoints(chosen)
        except WorkbenchError as exc:
            self.error = str(exc)
            self.message.value = error_html(self.error)
            return
        self.table.value = _table(self._found)
        self.plot.value = _plot(self._found)
        options = [(c.label, i) for i, c in enumerate(self._found)]
        self.pick_a.options = [("base model of B", -1), *options]
        self.pick_b.options = options
        if options:
            self.pick_b.value = options[0][1]
            self.pick_a.value = options[1][1] if len(options) > 1 else -1

    def choose(self, a: str | int, b: int) -> None:
        """Pick by index into the table's rows (A may be ``"base"``)."""
        self.pick_a.value = -1 if a == compare.BASE else a
        self.pick_b.value = b

    # -- A/B ------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the two picks (unloading an earlier pair)."""
        if self.pick_b.value is None:
            raise WorkbenchError("No checkpoints yet: run a fine-tune (Jobs tab), then Refresh.")
        a = compare.BASE if self.pick_a.value == -1 else self._found[self.pick_a.value]
        b = self._found[self.pick_b.value]
        if self.pair is not None:
            self.pair.unload()
            self.pair = None
        self.state = "loading"
        self.message.value = "loading …"
        self.pair = compare.load_pair(a, b)
        self._chats = (self.pair.a.chat(), self.pair.b.chat())
        self.memory.value = html.escape(self.pair.describe())
        self._labels = ("base model" if a == compare.BASE else a.label, b.label)
        fragment = compare.compare_fragment(None if a == compare.BASE else a, b)
        self.mlflow_link = self.mlflow_base + fragment if self.mlflow_base else ""
        self.link.value = (f'<a href="{html.escape(self.mlflow_link)}" target="_blank">these runs in MLflow</a>'
                           if self.mlflow_link else "")
        self.ask_button.disabled = False
        self.message.value = f"A: {html.escape(self._labels[0])} · B: {html.escape(self._labels[1])}"

    def ask(self, question: str | None = None, image: str | None = None) -> None:
        """The same question (and image) to A, then B; each side streams into its column."""
        if self.pair is None:
            raise WorkbenchError("Load A and B first.")
        question = (question if question is not None else self.question.value).strip()
        image = (image if image is not None else self.image_path.value).strip()
        if not question:
            raise WorkbenchError("Type a question for both sides.")
        images = [media.load_image(image)] if image else []
        self.state = "answering"
        for side in (self.side_a, self.side_b):
            side.remove_class("wb-compare-done")
            side.children = []
        for side, chat, label, trait in ((self.side_a, self._chats[0], self._labels[0], "answer_a"),
                                         (self.side_b, self._chats[1], self._labels[1], "answer_b")):
            head = W.HTML(f"<b>{html.escape(label)}</b>")
            body = W.HTML()
            side.children = [head, body]
            text = ""
            for piece in chat.stream(question, images):
                text += piece
                body.value = to_html(text)
            setattr(self, trait, text)
            turn = chat.turns[-1]
            picture = chat.image_for(turn)
            if picture is not None and turn.grounding.refs:
                side.children = [head, body, overlay(picture, text, caption=label)]
            side.add_class("wb-compare-done")  # this side has answered (the browser test waits for it)

    def close(self) -> None:
        if self.pair is not None:
            self.pair.unload()
            self.pair = None
        super().close()

    def _in_background(self, fn) -> None:
        def run():
            self.error = ""
            try:
                fn()
            except Exception as exc:  # shown in the panel; a traceback would go nowhere from this thread
                self.error = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
                self.message.value = error_html(self.error)
            finally:
                self.state = "idle"
        threading.Thread(target=run, daemon=True, name="workbench-compare").start()


def _default_mlflow_base() -> str:
    """Where links to the MLflow UI point: a team server's own address; in JupyterLab, the MLflow
    tile's proxy path under Jupyter's base URL (it serves the local store, reachable wherever
    Jupyter is); else a local tracking server's address."""
    import importlib.util
    import os
    from urllib.parse import urlparse

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    local = urlparse(uri).hostname in (None, "", "127.0.0.1", "localhost", "::1")
    if uri.startswith("http") and not local:
        return uri.rstrip("/") + "/"
    if os.environ.get("JPY_SESSION_NAME") and importlib.util.find_spec("jupyter_server_proxy"):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/").rstrip("/") + "/mlflow/"
    return uri.rstrip("/") + "/" if uri.startswith("http") else ""


def _table(found: list[compare.Checkpoint]) -> str:
    if not found:
        return "<i>No fine-tune checkpoints yet. Start one from the Jobs tab or with workbench.jobs.launch().</i>"
    rows = "".join(
        f"<tr><td>{html.escape(c.job)}</td><td>{html.escape(c.experiment)}</td>"
        f"<td>{'final' if c.step is None else c.step}</td><td>{c.kind}</td>"
        + "".join(f"<td>{c.metrics[m]:.4f}</td>" if m in c.metrics else "<td>–</td>" for m in compare.METRICS)
        + "</tr>" for c in found)
    head = "".join(f"<th>{m}</th>" for m in ("job", "experiment", "step", "kind", *compare.METRICS))
    return f'<table class="wb-compare-rows"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _plot(found: list[compare.Checkpoint]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(compare.METRICS), figsize=(8, 2.6))
    for ax, metric in zip(axes, compare.METRICS):
        by_job: dict[str, list] = {}
        for c in found:
            if c.step is not None and metric in c.metrics:
                by_job.setdefault(c.job, []).append((c.step, c.metrics[metric]))
        for job, points in by_job.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=job[-6:])
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if by_job:
            ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
