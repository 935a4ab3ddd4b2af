"""The errors `dgate eval` turns into a one-line message and exit code 2. No heavy imports: the CLI
catches them without loading torch."""

from __future__ import annotations


class EvalError(Exception):
    """A problem the user can fix (a flag, a file, the server); the message says what to do."""


class MetricWeightsError(EvalError, ValueError):
    """A metric's local weights file is not given, missing or unreadable. The message names the flag
    and the file it expects: nothing is ever downloaded."""


class EvalServerError(EvalError):
    """The OpenAI-compatible server cannot be reached, or refused a request (e.g. an unknown model)."""


class EvalConfigError(EvalError, ValueError):
    """An option that cannot work (bad size, no prompts, unknown metric)."""
