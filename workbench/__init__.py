"""InternVL Workbench: chat with, fine-tune and track InternVL models from JupyterLab and the terminal.

Importing the package is cheap and does nothing: the names below load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["load", "unload", "sessions", "memory_report", "Conversation", "GenerationSettings", "grounding", "home"]
__version__ = "0.1.0"

_LAZY = {
    "load": ("workbench.session", "load"),
    "unload": ("workbench.session", "unload"),
    "sessions": ("workbench.session", "sessions"),
    "memory_report": ("workbench.session", "memory_report"),
    "Conversation": ("workbench.chat", "Conversation"),
    "GenerationSettings": ("workbench.chat", "GenerationSettings"),
    "grounding": ("workbench.grounding", None),
    "home": ("workbench.paths", "home"),
}

if TYPE_CHECKING:  # pragma: no cover
    from . import grounding
    from .chat import Conversation, GenerationSettings
    from .paths import home
    from .session import load, memory_report, sessions, unload


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def load_ipython_extension(ipython) -> None:
    """``%load_ext workbench``: the workbench magics (see ``workbench.magics``)."""
    from .magics import load_ipython_extension as load

    load(ipython)
