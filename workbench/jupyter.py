"""JupyterLab integration: two launcher tiles, served through jupyter-server-proxy, so everything
is reached through Jupyter's own authenticated server and no new port is opened to the browser.

- **MLflow** — the MLflow UI of the workbench's tracking store (the one ``workbench.tracking``
  finds from the Jupyter server's folder), started on first use, in a JupyterLab tab.
- **InternVL Workbench** — opens a notebook with the workbench UI ready (``%load_ext workbench``
  and ``ui.show()``), created from the packaged template if the folder has none yet.

Both are registered as ``jupyter_serverproxy_servers`` entry points (pyproject.toml): installing the
package is all it takes. jupyter-server-proxy starts each command below on a free 127.0.0.1 port
(``{port}``) when the tile is first opened, supervises it, and proxies ``<base_url>/<name>/`` to it.

Why no lab extension of our own: jupyter-server-proxy already draws launcher tiles, opens them in a
JupyterLab tab and does the authentication; writing a TypeScript extension would need a JavaScript
build for nothing it cannot do.
"""

from __future__ import annotations

import html
import json
import os
import sys
from pathlib import Path
from urllib.parse import quote

ASSETS = Path(__file__).with_name("assets")
NOTEBOOK_NAME = "InternVL Workbench.ipynb"


def mlflow_tile() -> dict:
    """jupyter-server-proxy settings of the MLflow tile."""
    return {
        "command": [sys.executable, "-m", "workbench.jupyter", "mlflow", "{port}"],
        "timeout": 120,  # a cold MLflow server takes ~15 s on two cores; its first start, longer
        "new_browser_tab": False,
        "launcher_entry": {"title": "MLflow", "icon_path": str(ASSETS / "icons" / "mlflow.svg"), "category": "Other"},
    }


def workbench_tile() -> dict:
    """jupyter-server-proxy settings of the InternVL Workbench tile."""
    return {
        "command": [sys.executable, "-m", "workbench.jupyter", "open", "{port}", "{base_url}"],
        "timeout": 30,
        # A browser tab of its own that turns into JupyterLab with the notebook open: JupyterLab's
        # in-app frames are sandboxed and may not navigate the window around them.
        "new_browser_tab": True,
        "launcher_entry": {"title": "InternVL Workbench", "icon_path": str(ASSETS / "icons" / "workbench.svg"),
                           "category": "Notebook"},
    }


def serve_mlflow(port: int) -> None:
    """Become the MLflow server of the store this folder belongs to (jupyter-server-proxy supervises
    this process and stops it with Jupyter)."""
    from .tracking import server_command, store_root

    root = store_root()
    (root / "mlruns" / "artifacts").mkdir(parents=True, exist_ok=True)
    command = server_command(root, port)
    os.execv(command[0], command)


def ensure_notebook(folder: Path) -> Path:
    """The workbench notebook in ``folder``, written from the packaged template if absent (an
    existing one, maybe edited by the user, is kept as it is)."""
    path = folder / NOTEBOOK_NAME
    if not path.exists():
        tmp = path.with_name("." + path.name + ".tmp")
        tmp.write_text((ASSETS / "workbench.ipynb").read_text())
        tmp.replace(path)
    return path


def serve_opener(port: int, base_url: str) -> None:
    """A one-page server: each visit makes sure the workbench notebook exists in this folder and
    sends the browser tab on to JupyterLab with that notebook open."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    folder = Path.cwd()
    target = base_url.rstrip("/") + "/lab/tree/" + quote(NOTEBOOK_NAME)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            try:
                ensure_notebook(folder)
                body = (f"<!doctype html><title>InternVL Workbench</title><p>Opening "
                        f"<a href={json.dumps(target)}>{html.escape(NOTEBOOK_NAME)}</a>…</p>"
                        f"<script>window.location.replace({json.dumps(target)});</script>")
                status = 200
            except OSError as exc:  # a read-only folder, say: show why instead of a blank tab
                body, status = f"<p>Could not write {html.escape(NOTEBOOK_NAME)} in {html.escape(str(folder))}: {html.escape(str(exc))}</p>", 500
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["mlflow"] and len(args) == 2:
        serve_mlflow(int(args[1]))
    elif args[:1] == ["open"] and len(args) == 3:
        serve_opener(int(args[1]), args[2])
    else:
        print("usage: python -m workbench.jupyter mlflow PORT | open PORT BASE_URL "
              "(started by jupyter-server-proxy from the launcher tiles)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
