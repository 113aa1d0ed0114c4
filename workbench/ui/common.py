"""Small pieces the panels share: a periodic refresher and the error line's markup."""

from __future__ import annotations

import html
import threading
from typing import Callable


def error_html(message: str) -> str:
    """The panels' error line (the browser tests look for ``wb-error``)."""
    return f'<span class="wb-error" style="color: #c0392b">⚠ {html.escape(message)}</span>'


class Ticker:
    """Calls ``fn`` every ``seconds`` on a daemon thread until stopped."""

    def __init__(self, seconds: float, fn: Callable):
        self._stop = threading.Event()
        self._fn = fn
        self._seconds = seconds
        if seconds > 0:
            threading.Thread(target=self._run, daemon=True, name="workbench-memory").start()

    def _run(self) -> None:
        while not self._stop.wait(self._seconds):
            try:
                self._fn()
            except Exception:  # a failed refresh must not kill the ticker; the next one retries
                pass

    def stop(self) -> None:
        self._stop.set()
