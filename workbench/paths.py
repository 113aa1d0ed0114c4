"""The one directory where the workbench keeps its state.

Built models, converted checkpoints, job records, chat logs and caches all live under
``home()``. ``WORKBENCH_HOME`` overrides it, so a single environment variable isolates a test, a
CI run or a second user. The variable is read here and nowhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "WORKBENCH_HOME"


def home() -> Path:
    """The workbench home: ``$WORKBENCH_HOME``, else ``$XDG_DATA_HOME/internvl-workbench``, else
    ``~/.local/share/internvl-workbench``. Created on first use."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        path = Path(explicit).expanduser()
    else:
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        path = Path(base) / "internvl-workbench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def subdir(*parts: str) -> Path:
    """A folder under the home, created on demand (e.g. ``subdir("models")``)."""
    path = home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
