"""Notebook panels. ``show()`` puts them together in tabs; each is usable alone:

- :class:`ChatPanel` — chat with streaming, stop, images by upload/path/URL, box overlays;
- :class:`ModelPanel` — load/unload models with memory limits, live memory bars;
- :class:`JobsPanel` — fine-tune jobs: progress and ETA, loss curve, log, cancel / resume / merge;
- :class:`ComparePanel` — checkpoints with their evaluation, A/B chat between two of them;
- :func:`overlay` / :class:`Overlay` — any image with labelled boxes (prediction and ground truth).
"""

from __future__ import annotations

__all__ = ["App", "ChatPanel", "ComparePanel", "JobsPanel", "ModelPanel", "Overlay", "overlay", "show"]


def __getattr__(name):  # the widget stack is imported on first use, not with the package
    if name == "ChatPanel":
        from .chat import ChatPanel
        return ChatPanel
    if name == "ModelPanel":
        from .model import ModelPanel
        return ModelPanel
    if name == "ComparePanel":
        from .compare import ComparePanel
        return ComparePanel
    if name == "JobsPanel":
        from .jobs import JobsPanel
        return JobsPanel
    if name in ("Overlay", "overlay"):
        from . import overlay_panel as module
        return getattr(module, name)
    if name in ("App", "show"):
        from . import app
        return getattr(app, name)
    raise AttributeError(f"module 'workbench.ui' has no attribute {name!r}")
