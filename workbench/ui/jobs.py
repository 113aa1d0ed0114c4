"""The jobs panel: every fine-tune recorded under the workbench home, running or not, with the
selected job's state, a progress bar with ETA, the loss / learning-rate curves, the end of its log,
and cancel / resume / merge.

Everything it shows is read from the job folders (``workbench.jobs``), never from the process that
launched them, so a panel opened after a kernel restart shows the same jobs and keeps following
the ones still running.
"""

from __future__ import annotations

import html
import io
import threading

import ipywidgets as W
import traitlets

from .. import jobs as jobs_module
from ..errors import WorkbenchError
from .common import Ticker, error_html

STATE_STYLE = {"starting": "info", "running": "info", "finished": "success", "failed": "danger", "killed": "warning"}


class JobsPanel(W.VBox):
    """Follow fine-tune jobs. ``selected`` is the id of the job shown; ``state`` its state."""

    selected = traitlets.Unicode("")
    state = traitlets.Unicode("")
    busy = traitlets.Bool(False)
    error = traitlets.Unicode("")

    def __init__(self, *, refresh_s: float = 2.0):
        self.jobs = W.Select(options=[], rows=6, description="jobs", layout=W.Layout(width="560px"))
        self.jobs.add_class("wb-jobs-list")
        self.summary = W.HTML()
        self.summary.add_class("wb-jobs-summary")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="", layout=W.Layout(width="420px"))
        self.progress.add_class("wb-jobs-progress")
        self.eta = W.HTML()
        self.eta.add_class("wb-jobs-eta")
        self.plot = W.Image(format="png", layout=W.Layout(width="560px"))
        self.plot.add_class("wb-jobs-plot")
        self.log_view = W.Textarea(value="", rows=12, disabled=True, layout=W.Layout(width="100%"))
        self.log_view.add_class("wb-jobs-log")
        self.cancel_button = W.Button(description="Cancel", icon="stop", button_style="danger")
        self.resume_button = W.Button(description="Resume", icon="play")
        self.merge_button = W.Button(description="Merge final adapter", icon="compress")
        self.refresh_button = W.Button(description="Refresh", icon="refresh")
        self.message = W.HTML()
        self.message.add_class("wb-jobs-message")
        self.auto_refresh = W.Checkbox(value=True, description="follow running jobs", indent=False)

        self.jobs.observe(lambda change: self.select(change["new"] or ""), names="value")
        self.cancel_button.on_click(lambda _: self._in_background(self.cancel))
        self.resume_button.on_click(lambda _: self._in_background(self.resume))
        self.merge_button.on_click(lambda _: self._in_background(self.merge))
        self.refresh_button.on_click(lambda _: self.refresh())
        super().__init__([
            W.HTML("<b>Fine-tune jobs</b> — <code>workbench.jobs.launch(recipe, **settings)</code> "
                   "or <code>workbench sft …</code> start one"),
            W.HBox([self.jobs, self.refresh_button]), self.summary, W.HBox([self.progress, self.eta]),
            self.plot, W.HBox([self.cancel_button, self.resume_button, self.merge_button]), self.message,
            W.HTML("<b>Log</b>"), self.log_view, self.auto_refresh,
        ])
        self.add_class("wb-jobs")
        self._plotted: tuple | None = None
        self._lock = threading.Lock()  # the ticker and a button may refresh at once
        self.refresh()
        self._ticker = Ticker(refresh_s, self._tick)

    # -- verbs ----------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the job folders: the list, and the selected job's state, progress, plot, log."""
        with self._lock:
            found = jobs_module.list_jobs()
            self._by_id = {job.id: job for job in found}
            options = [(self._label(job), job.id) for job in found]
            if options != list(self.jobs.options):
                self.jobs.options = options
            if found and self.selected not in self._by_id:
                self.jobs.value = found[0].id  # the newest; observe() calls select()
            elif not found:
                self.summary.value = "<i>No fine-tune jobs yet.</i>"
                self._buttons(None)
            self._show()

    def select(self, job_id: str) -> None:
        self.selected = job_id
        if job_id in self._by_id and self.jobs.value != job_id:
            self.jobs.value = job_id
        self._plotted = None
        self._show()

    def launch(self, recipe=None, **overrides):
        """Start a fine-tune (as :func:`workbench.jobs.launch`) and show it."""
        try:
            job = jobs_module.launch(recipe, **overrides)
        except WorkbenchError as exc:
            return self._fail(str(exc))
        self.refresh()
        self.select(job.id)
        self._say(f"Started job <code>{job.id}</code>.")
        return job

    def cancel(self) -> None:
        job = self._job()
        if job is None:
            return self._fail("Select a job to cancel.")
        job.cancel()
        kept = job.checkpoints()
        self._say(f"Cancelled <code>{job.id}</code>; "
                  + (f"last checkpoint kept: <code>{html.escape(kept[-1].name)}</code>." if kept else "no checkpoint was saved."))
        self.refresh()

    def resume(self) -> None:
        job = self._job()
        if job is None:
            return self._fail("Select a job to resume.")
        try:
            job.resume()
        except WorkbenchError as exc:
            return self._fail(str(exc))
        self._say(f"Resumed <code>{job.id}</code> from its last checkpoint, in the same MLflow run.")
        self.refresh()

    def merge(self):
        job = self._job()
        if job is None or job.state != "finished":
            return self._fail("Select a finished job to merge its final adapter.")
        try:
            out = job.merge()
        except WorkbenchError as exc:
            return self._fail(str(exc))
        self._say(f"Merged into <code>{html.escape(str(out))}</code> (logged to the job's MLflow run); "
                  f"<code>workbench.load({str(out)!r})</code> chats with it.")
        return out

    def close(self) -> None:
        if hasattr(self, "_ticker"):
            self._ticker.stop()
        super().close()

    # -- internals ------------------------------------------------------------------------------

    def _job(self):
        return self._by_id.get(self.selected)

    def _tick(self) -> None:
        if self.auto_refresh.value and not self.busy:
            self.refresh()

    def _show(self) -> None:
        job = self._job()
        if job is None:
            return
        state = job.state
        self.state = state
        status, progress, record = job.status(), job.progress(), job.record
        step, total = progress.get("step", 0), progress.get("max_steps") or 0
        self.progress.max = max(total, 1)
        self.progress.value = min(step, self.progress.max)
        self.progress.bar_style = STATE_STYLE.get(state, "info")
        self.progress.description = f"{step}/{total or '?'}"
        eta = progress.get("eta_s")
        self.eta.value = (f"ETA {_duration(eta)}" if state == "running" and eta is not None else
                          f"took {_duration(progress['elapsed_s'])}" if state == "finished" and progress.get("elapsed_s") else "")
        datasets = ", ".join(p.rsplit("/", 1)[-1] for p in record.get("dataset", []))
        lines = [f"<b>{html.escape(state)}</b> · model <code>{html.escape(str(record.get('model')))}</code>"
                 f" · data <code>{html.escape(datasets)}</code> · MLflow run <code>{html.escape(job.run_id)}</code>"]
        if progress.get("last_checkpoint_step") is not None:
            lines.append(f"last checkpoint: step {progress['last_checkpoint_step']}")
        if status.get("error"):
            lines.append(f'<span class="wb-error" style="color: #c0392b">{html.escape(status["error"][:500])}</span>')
        self.summary.value = "<br>".join(lines)
        self.log_view.value = job.log_tail(60)
        self._buttons(state)
        history = progress.get("history") or []
        key = (job.id, len(history), history[-1]["step"] if history else None)
        if key != self._plotted:
            self.plot.value = plot_history(history)
            self._plotted = key

    def _buttons(self, state: str | None) -> None:
        self.cancel_button.disabled = state not in ("starting", "running")
        self.resume_button.disabled = state not in ("killed", "failed")
        self.merge_button.disabled = state != "finished"

    def _label(self, job) -> str:
        record = job.record
        return f"{job.id} · {job.state} · {record.get('model')}"

    def _in_background(self, verb) -> None:
        """Buttons run their verb on a thread: cancel waits for the process tree, merge writes a model."""
        if self.busy:
            return self._fail("Still working on the last request.")

        def work():
            try:
                verb()
            except Exception as exc:  # say it in the panel; the kernel stays usable
                self._fail(f"{type(exc).__name__}: {exc}")
            finally:
                self.busy = False

        self.busy = True  # before the thread starts: whoever clicked sees it at once
        threading.Thread(target=work, daemon=True, name="workbench-jobs").start()

    def _fail(self, message: str) -> None:
        self.error = message
        self.message.value = error_html(message)

    def _say(self, message_html: str) -> None:
        self.error = ""
        self.message.value = message_html


def plot_history(history: list[dict]) -> bytes:
    """Loss and learning rate against step, as a PNG (empty plot before the first logged step)."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a kernel thread; the PNG goes to the browser
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 2.4), dpi=80)
    loss_ax = fig.add_subplot(1, 1, 1)
    steps = [h["step"] for h in history]
    loss_ax.plot(steps, [h["loss"] for h in history], color="#1f77b4", label="loss")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss", color="#1f77b4")
    lr = [(h["step"], h["lr"]) for h in history if h.get("lr") is not None]
    if lr:
        lr_ax = loss_ax.twinx()
        lr_ax.plot([s for s, _ in lr], [v for _, v in lr], color="#ff7f0e", label="learning rate")
        lr_ax.set_ylabel("learning rate", color="#ff7f0e")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    if not history:
        loss_ax.text(0.5, 0.5, "no step logged yet", ha="center", va="center", transform=loss_ax.transAxes)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
