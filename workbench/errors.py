"""Errors the workbench raises on purpose.

Every class here is meant to be read by a *person*: the message says what went wrong and what to do
about it. The class says who is expected to act:

- ``UserInputError`` and its children: the user gave something we cannot use (a path, a name, a
  flag). The CLI prints the message alone, without a traceback, and exits with status 2.
- ``EnvironmentProblem``: the machine lacks something (a GPU, a package, network access to a hub).
  Printed like a user error; the fix is an install or a download, not a different argument.
- ``WorkbenchBug``: a check inside the workbench failed. Printed with its traceback; please report.

Anything else that escapes is an ordinary exception from a library we call.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class of every error the workbench raises deliberately."""


class UserInputError(WorkbenchError, ValueError):
    """Something the user passed cannot be used; the message names the fix."""


class ModelNotFoundError(UserInputError):
    """A model name, hub id or directory that does not lead to a loadable model."""


class ImageError(UserInputError):
    """An image or video that cannot be read, fetched or used."""


class ConversationError(UserInputError):
    """A chat request that breaks the rules of the prompt or the model family."""


class PlacementError(UserInputError):
    """The model cannot be placed within the memory budgets or device map the user gave."""


class EnvironmentProblem(WorkbenchError, RuntimeError):
    """The machine lacks something (a GPU, a package, hub access); the message says what to install or fetch."""


class WorkbenchBug(WorkbenchError, AssertionError):
    """An internal check failed. This is our fault; please report it with the traceback."""
