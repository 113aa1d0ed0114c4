"""IPython magics: ``%load_ext workbench`` registers them.

    %wb_chat [MODEL]        the chat panel, on MODEL (loaded first) or on the current session
    %%wb_ask [--new]        ask the current session the cell's text; images inline as
                            <img>path-or-url</img>; the answer, with its boxes drawn over the image.
                            Cells continue one conversation per session; --new starts another.
    %wb_jobs [JOB]          the jobs panel (JOB selected), or every job in one table with --list
    %wb_compare             the checkpoint comparison panel (A/B chat)

The panel magics return their panel, so ``panel = %wb_chat`` keeps a handle.
"""

from __future__ import annotations

import shlex

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from . import session as sessions
from .errors import WorkbenchError


@magics_class
class WorkbenchMagics(Magics):
    def __init__(self, shell):
        super().__init__(shell)
        self.conversations: dict[str, object] = {}  # session name → the %%wb_ask conversation

    @line_magic
    def wb_chat(self, line: str):
        """%wb_chat [MODEL]: the chat panel (loading MODEL first when named)."""
        from IPython.display import display

        from .ui.chat import ChatPanel

        model = line.strip()
        try:
            session = sessions.load(model) if model else (sessions.get() if sessions.sessions() else None)
        except WorkbenchError as exc:
            return _error(exc)
        panel = ChatPanel(session)
        display(panel)
        return panel

    @cell_magic
    def wb_ask(self, line: str, cell: str):
        """%%wb_ask [--new]: ask the current session the cell's text (images as <img>path</img>)."""
        from IPython.display import Markdown, display

        from .ui.overlay_panel import overlay

        words = shlex.split(line)
        unknown = [w for w in words if w != "--new"]
        if unknown:
            return _error(f"%%wb_ask takes only --new (got {' '.join(unknown)}); the question goes in the cell.")
        text = cell.strip()
        if not text:
            return _error("%%wb_ask needs a question in the cell, e.g. <img>examples/demo-shapes.png</img>Describe the image.")
        try:
            session = sessions.get()
            conv = self.conversations.get(session.name)
            if conv is None or conv.session is not session or "--new" in words:
                conv = self.conversations[session.name] = session.chat()
            answer = conv.ask(text)
        except WorkbenchError as exc:
            return _error(exc)
        turn = conv.turns[-1]
        display(Markdown(answer))
        image = conv.image_for(turn)
        if image is not None and turn.grounding.refs:
            display(overlay(image, answer))
        return None

    @line_magic
    def wb_jobs(self, line: str):
        """%wb_jobs [JOB]: the jobs panel, with JOB selected."""
        from IPython.display import display

        from . import jobs
        from .ui.jobs import JobsPanel

        job_id = line.strip()
        if job_id and job_id not in {j.id for j in jobs.list_jobs()}:
            return _error(f"No job {job_id!r}. Jobs: {', '.join(j.id for j in jobs.list_jobs()) or 'none yet'}.")
        panel = JobsPanel()
        if job_id:
            panel.select(job_id)
        display(panel)
        return panel

    @line_magic
    def wb_compare(self, line: str):
        """%wb_compare: the checkpoint comparison panel."""
        from IPython.display import display

        from .ui.compare import ComparePanel

        panel = ComparePanel()
        display(panel)
        return panel


def _error(message) -> None:
    """Bad input in a magic is a message in the output, never a traceback."""
    from IPython.display import HTML, display

    from .ui.common import error_html

    display(HTML(error_html(str(message))))


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(WorkbenchMagics)
