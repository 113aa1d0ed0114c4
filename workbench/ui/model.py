"""The model panel: pick a catalog model or a path, dtype, a memory limit per visible GPU and the
attention implementation; load (on a worker thread, with the steps shown); unload; live memory
bars per device (each GPU, and this process's resident memory on the CPU); the loaded sessions.
"""

from __future__ import annotations

import html
import threading
from typing import Callable

import ipywidgets as W
import traitlets

from .. import catalog, placement
from .. import session as sessions
from ..errors import WorkbenchError
from .common import Ticker, error_html

DTYPES = ("auto", "bf16", "fp16", "fp32")
ATTENTION = ("default", "sdpa", "eager", "flash_attention_2")
STEPS = ("checking the request", "loading weights", "ready")


class ModelPanel(W.VBox):
    """Load and unload models. ``on_loaded`` callbacks get each new Session (the app points the
    chat panel at it)."""

    busy = traitlets.Bool(False)
    error = traitlets.Unicode("")

    def __init__(self, *, refresh_s: float = 2.0):
        self.on_loaded: list[Callable] = []
        self.gpus = sessions.gpu_count()
        self.model = W.Combobox(value=catalog.DEFAULT_MODEL, options=catalog.names(), ensure_option=False,
                                placeholder="catalog name, hub id or local folder", description="model",
                                layout=W.Layout(width="420px"))
        self.model.add_class("wb-model-name")
        self.dtype = W.Dropdown(options=DTYPES, value="auto", description="dtype")
        self.attention = W.Dropdown(options=ATTENTION, value="default", description="attention")
        self.limits = [W.Text(placeholder="no limit (e.g. 15GB)", description=f"GPU {i} limit",
                              style={"description_width": "90px"}) for i in range(self.gpus)]
        for box in self.limits:
            box.add_class("wb-model-limit")
        where = (W.VBox(self.limits) if self.gpus else
                 W.HTML("<i>No GPU is visible: models load on the CPU in float32.</i>"))
        self.session_name = W.Text(placeholder="(automatic)", description="session name")
        self.load_button = W.Button(description="Load", icon="download", button_style="primary")
        self.load_button.add_class("wb-model-load")
        self.progress = W.IntProgress(value=0, min=0, max=len(STEPS) - 1, description="", bar_style="info",
                                      layout=W.Layout(visibility="hidden"))
        self.status = W.HTML()
        self.status.add_class("wb-model-status")
        self.loaded = W.Select(options=[], rows=4, description="loaded", layout=W.Layout(width="420px"))
        self.unload_button = W.Button(description="Unload", icon="eject")
        self.memory = W.VBox()
        self.memory.add_class("wb-memory")
        self.auto_refresh = W.Checkbox(value=True, description="refresh memory every few seconds", indent=False)

        self.load_button.on_click(lambda _: self.load())
        self.unload_button.on_click(lambda _: self.unload())
        super().__init__([
            W.HTML("<b>Load a model</b>"), self.model, W.HBox([self.dtype, self.attention]), where,
            self.session_name, W.HBox([self.load_button, self.progress]), self.status,
            W.HTML("<b>Sessions</b>"), W.HBox([self.loaded, self.unload_button]),
            W.HTML("<b>Memory</b>"), self.memory, self.auto_refresh,
        ])
        self.add_class("wb-model")
        self.refresh()
        self._ticker = Ticker(refresh_s, lambda: self.auto_refresh.value and self.refresh())

    # -- verbs ----------------------------------------------------------------------------------

    def request(self) -> dict:
        """The keyword arguments of :func:`workbench.load` the fields describe."""
        limits = {i: box.value.strip() for i, box in enumerate(self.limits) if box.value.strip()}
        return dict(
            model=self.model.value.strip() or None,
            dtype=None if self.dtype.value == "auto" else self.dtype.value,
            max_memory=limits or None,
            attn_implementation=None if self.attention.value == "default" else self.attention.value,
            name=self.session_name.value.strip() or None,
        )

    def load(self, wait: bool = False):
        """Load what the fields say, on a worker thread (``wait=True`` blocks until done)."""
        if self.busy:
            return self._fail("A model is already loading; wait for it to finish.")
        self.busy = True
        self._step(0)
        self._say("")
        worker = threading.Thread(target=self._load, daemon=True, name="workbench-load")
        worker.start()
        if wait:
            worker.join()
        return worker

    def unload(self, name: str | None = None) -> None:
        name = name or self.loaded.value
        if not name:
            return self._fail("Select a loaded session to unload.")
        try:
            sessions.unload(name)
        except WorkbenchError as exc:
            return self._fail(str(exc))
        self._say(f"Unloaded {html.escape(name)}; its memory is free.")
        self.refresh()

    def refresh(self) -> None:
        """Redraw the memory bars and the list of sessions."""
        report = sessions.memory_report()
        if len(self.memory.children) != len(report):  # built once; later refreshes update in place
            rows = []
            for _ in report:
                row = W.HBox([W.FloatProgress(min=0.0, max=1.0, layout=W.Layout(width="260px")), W.HTML()])
                row.add_class("wb-memory-row")
                rows.append(row)
            self.memory.children = rows
        for row, dev in zip(self.memory.children, report):
            bar, text = row.children
            share = dev.used / dev.total if dev.total else 0.0
            bar.value = share
            bar.bar_style = "danger" if share > 0.9 else ("warning" if share > 0.75 else "success")
            label = "CPU (this process)" if dev.device == "cpu" else dev.device
            text.value = f"<code>{label}</code> {placement.gib(dev.used)} / {placement.gib(dev.total)}"
        names = list(sessions.sessions())
        self.loaded.options = names
        if names and self.loaded.value not in names:
            self.loaded.value = names[-1]

    def close(self) -> None:
        self._ticker.stop()
        super().close()

    # -- internals ------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            args = self.request()
            self._step(1)
            session = sessions.load(**args)
        except WorkbenchError as exc:
            self._step(None)
            return self._fail(str(exc))
        except Exception as exc:  # e.g. a corrupt checkpoint: say so in place, keep the kernel
            self._step(None)
            return self._fail(f"Loading failed: {type(exc).__name__}: {exc}")
        finally:
            self.busy = False
        self._step(2)
        where = "CPU" if session.input_device.type == "cpu" else str(session.input_device)
        self._say(f"Loaded <b>{html.escape(session.name)}</b> ({html.escape(session.source)}, "
                  f"{str(session.dtype).replace('torch.', '')}, {where}).")
        self.refresh()
        for callback in self.on_loaded:
            callback(session)

    def _step(self, index: int | None) -> None:
        if index is None:
            self.progress.layout.visibility = "hidden"
            return
        self.progress.layout.visibility = "visible"
        self.progress.value = index
        self.progress.description = STEPS[index]
        self.progress.bar_style = "success" if index == len(STEPS) - 1 else "info"

    def _fail(self, message: str) -> None:
        self.error = message
        self.status.value = error_html(message)

    def _say(self, message_html: str) -> None:
        self.error = ""
        self.status.value = message_html
