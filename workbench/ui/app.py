"""The whole workbench in one widget: Chat, Model, Jobs and Compare tabs, wired so that a model
loaded in the Model tab is the one the Chat tab talks to."""

from __future__ import annotations

import ipywidgets as W

from .. import session as sessions
from .chat import ChatPanel
from .compare import ComparePanel
from .jobs import JobsPanel
from .model import ModelPanel


class App(W.Tab):
    def __init__(self, session=None):
        self.chat = ChatPanel(session)
        self.model = ModelPanel()
        self.jobs = JobsPanel()
        self.compare = ComparePanel(refresh=False)  # reads MLflow: only once the tab is opened
        self.model.on_loaded.append(self.chat.use)
        super().__init__([self.chat, self.model, self.jobs, self.compare], titles=("Chat", "Model", "Jobs", "Compare"))
        self._compared = False
        self.observe(self._opened, names="selected_index")
        self.add_class("wb-app")
        # With nothing loaded yet, open on the Model tab: that is the first thing to do.
        self.selected_index = 0 if (session is not None or sessions.sessions()) else 1

    def _opened(self, change) -> None:
        if change["new"] == 3 and not self._compared:
            self._compared = True
            self.compare.refresh(experiments=True)

    def close(self) -> None:
        self.model.close()
        self.jobs.close()
        self.compare.close()
        super().close()


def show(session=None) -> App:
    """Display the workbench (Chat, Model and Jobs tabs) and return it; ``session`` as for ChatPanel."""
    from IPython.display import display

    app = App(session)
    display(app)
    return app
