"""Where runs are tracked: a local MLflow tracking server, started on demand, or a team server.

``MLFLOW_TRACKING_URI`` set by the user wins: everything goes there. Otherwise the workbench runs
one ``mlflow server`` per store on 127.0.0.1, with a SQLite backend and artifacts under ``mlruns/``:
the nearest ``mlruns/`` folder at or above the working directory (as git finds ``.git``), else a new
one in the working directory. So notebooks in sub-folders of a project, its terminal commands and
the JupyterLab MLflow tab (``workbench.jupyter``) all see the same runs. The kernel and every training process talk to it over HTTP: several
processes writing one SQLite file directly is what breaks, one server serialising them does not.
The server is detached (it outlives the kernel) and recorded under the workbench home, so a later
kernel or job finds and reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import EnvironmentProblem
from .paths import subdir


@dataclass
class Server:
    uri: str
    pid: int
    root: str  # the working directory whose mlruns/ it serves

    @property
    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.pid)
            for p in [*proc.children(recursive=True), proc]:
                p.terminate()
            psutil.wait_procs([proc], timeout=15)
        except psutil.NoSuchProcess:
            pass
        _record(Path(self.root)).unlink(missing_ok=True)


def tracking_uri(root: str | Path | None = None, *, start: bool = True) -> str:
    """The URI every process should log to (starts the local server if needed)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    server = local_server(root, start=start)
    return server.uri if server else ""


def store_root(start: str | Path | None = None) -> Path:
    """The folder whose ``mlruns/`` holds the runs: the nearest at or above ``start`` (default: the
    working directory) that has one, else ``start`` itself."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "mlruns").is_dir():
            return folder
    return start


def server_command(root: Path, port: int) -> list[str]:
    """The ``mlflow server`` command line for the store under ``root``."""
    store = root / "mlruns"
    return [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "artifacts"),
            "--workers", "1"]


def local_server(root: str | Path | None = None, *, start: bool = True, timeout_s: float = 120) -> Server | None:
    """The local server for the store under ``root`` (default: see :func:`store_root`), started if
    not running."""
    root = Path(root).resolve() if root else store_root()
    record = _record(root)
    if record.exists():
        server = Server(**json.loads(record.read_text()))
        if server.alive:
            return server
    if not start:
        return None
    store = root / "mlruns"
    (store / "artifacts").mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = open(subdir("mlflow") / f"server-{port}.log", "ab")
    proc = subprocess.Popen(
        server_command(root, port),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    server = Server(f"http://127.0.0.1:{port}", proc.pid, str(root))
    deadline = time.monotonic() + timeout_s
    while not server.alive:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise EnvironmentProblem(f"The MLflow server did not start (see {log.name}). Check that mlflow is "
                                     "installed in this environment, or set MLFLOW_TRACKING_URI to a running server.")
        time.sleep(0.3)
    record.write_text(json.dumps(asdict(server)))
    return server


def _record(root: Path) -> Path:
    return subdir("mlflow") / f"server-{hashlib.sha1(str(root).encode()).hexdigest()[:12]}.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
