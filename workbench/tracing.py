"""Chat turns as MLflow traces, so what each model and each checkpoint said can be reviewed in MLflow.

On by default; ``workbench.tracing.disable()`` (or the toggle in the chat and compare panels) turns
it off, and the choice is kept in the workbench home, so a new kernel and the CLI follow it.

Each turn is one trace, in the MLflow experiment ``workbench-chat``, of one CHAT_MODEL span:
inputs are the question, small JPEG thumbnails of its images (data URIs) and their sources, and the
generation settings; outputs are the answer, its parsed boxes and whether it was stopped;
attributes and trace tags say which model, which adapter and which session answered, with token
counts, latency and time to first token. The span's start and end are the turn's own.

Traces are written by one background thread, so a tracking server that is slow, or still starting
(the local one takes ~15 s cold), never delays an answer. A failure to write is kept in
:data:`last_error` and in ``logs/tracing.log`` under the home, never raised into the chat.
"""

from __future__ import annotations

import base64
import io
import queue
import threading
import time
import traceback
from dataclasses import asdict

from .paths import set_setting, settings, subdir

EXPERIMENT = "workbench-chat"
THUMBNAIL = 128  # px, longest side
SETTING = "trace_chats"
last_error: str | None = None
_queue: "queue.Queue[dict]" = queue.Queue()
_worker: threading.Thread | None = None
_lock = threading.Lock()


def enabled() -> bool:
    return bool(settings().get(SETTING, True))


def enable(on: bool = True) -> None:
    """Trace chat turns from now on (``on=False``: stop); kept for later kernels too."""
    set_setting(SETTING, bool(on))


def disable() -> None:
    enable(False)


def record(conversation, turn) -> None:
    """Queue one finished turn to be written as a trace; returns at once."""
    global _worker
    _queue.put(_payload(conversation, turn))
    with _lock:
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_drain, daemon=True, name="workbench-tracing")
            _worker.start()


def pending() -> int:
    """Turns queued but not written yet."""
    return _queue.unfinished_tasks


def flush(timeout: float = 120) -> bool:
    """Wait until every queued turn is written (or ``timeout`` seconds); True when all were."""
    deadline = time.monotonic() + timeout
    while _queue.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _queue.unfinished_tasks


def _payload(conversation, turn) -> dict:
    """Everything the trace needs, taken now (the images are in memory now)."""
    session = conversation.session
    end = time.time_ns()
    refs = turn.grounding.refs
    return {
        "start_ns": end - int(turn.seconds * 1e9), "end_ns": end,
        "inputs": {"question": turn.question, "images": [_thumbnail(im) for im in turn.images],
                   "image_sources": turn.image_sources, "videos": len(turn.videos), "settings": asdict(turn.settings)},
        "outputs": {"answer": turn.answer, "boxes": [{"label": r.label, "boxes": [list(b) for b in r.boxes]} for r in refs],
                    "stopped": turn.stopped},
        "attributes": {"model": session.source, "model_path": str(session.path), "adapter": session.adapter or "",
                       "session": session.name, "prompt_tokens": turn.prompt_tokens, "answer_tokens": turn.answer_tokens,
                       "latency_s": round(turn.seconds, 4),
                       "first_token_s": None if turn.first_token_s is None else round(turn.first_token_s, 4)},
        "tags": {"model": session.source, "adapter": session.adapter or "(none)", "session": session.name},
    }


def _thumbnail(image) -> str:
    small = image.convert("RGB").copy()
    small.thumbnail((THUMBNAIL, THUMBNAIL))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _drain() -> None:
    global last_error
    while True:
        try:
            payload = _queue.get(timeout=60)
        except queue.Empty:
            return  # idle: the thread ends; the next turn starts another
        try:
            _write(payload)
            last_error = None
        except Exception as exc:  # the chat goes on; the reason is kept for whoever looks
            last_error = f"{type(exc).__name__}: {exc}"
            with open(subdir("logs") / "tracing.log", "a", encoding="utf-8") as f:
                f.write(traceback.format_exc() + "\n")
        finally:
            _queue.task_done()


def _write(payload: dict) -> None:
    import mlflow

    from .tracking import tracking_uri

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    span = mlflow.start_span_no_context(
        "chat turn", span_type="CHAT_MODEL", inputs=payload["inputs"], attributes=payload["attributes"],
        tags=payload["tags"], experiment_id=experiment_id, start_time_ns=payload["start_ns"])
    span.end(outputs=payload["outputs"], end_time_ns=payload["end_ns"])
    mlflow.flush_trace_async_logging()
