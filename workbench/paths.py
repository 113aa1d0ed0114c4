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


def built_model(name: str, build) -> Path:
    """``models/<name>`` under the home, made by ``build(folder)`` on first use. The build writes
    into a temporary folder that is renamed into place, so a half-built model is never picked up
    and two processes racing both end with the same complete folder."""
    import shutil
    import tempfile

    target = subdir("models") / name
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first; its model is the same
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


SETTINGS_FILE = "settings.json"


def settings() -> dict:
    """The user's lasting choices (e.g. ``trace_chats``), kept in ``home()/settings.json``."""
    import json

    path = home() / SETTINGS_FILE
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}  # a hand-edited file gone bad: defaults, rather than every panel failing


def set_setting(key: str, value) -> None:
    """Keep one choice in ``home()/settings.json`` (written whole, then renamed into place)."""
    import json

    path = home() / SETTINGS_FILE
    current = settings()
    current[key] = value
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(current, indent=1))
    tmp.replace(path)
