"""The whole workbench in one widget: Chat, Model and Jobs tabs, wired so that a model loaded in
the Model tab is the one the Chat tab talks to."""

from __future__ import annotations

import ipywidgets as W

from .. import session as sessions
from .chat import ChatPanel
from .jobs import JobsPanel
from .model import ModelPanel


class App(W.Tab):
    def __init__(self, session=None):
        self.chat = ChatPanel(session)
        self.model = ModelPanel()
        self.jobs = JobsPanel()
        self.model.on_loaded.append(self.chat.use)
        super().__init__([self.chat, self.model, self.jobs], titles=("Chat", "Model", "Jobs"))
        self.add_class("wb-app")
        # With nothing loaded yet, open on the Model tab: that is the first thing to do.
        self.selected_index = 0 if (session is not None or sessions.sessions()) else 1

    def close(self) -> None:
        self.model.close()
        self.jobs.close()
        super().close()


def show(session=None) -> App:
    """Display the workbench (Chat, Model and Jobs tabs) and return it; ``session`` as for ChatPanel."""
    from IPython.display import display

    app = App(session)
    display(app)
    return app
