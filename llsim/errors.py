"""User-facing errors.

Anything a user can get wrong (a path, a YAML field, a model that cannot be cut) raises
:class:`LLSimError`. The CLI prints its message on one line and exits with code 2; it never
shows a traceback for these.
"""


class LLSimError(Exception):
    """An error caused by the user's input; the message says what is wrong and what to do."""

    exit_code = 2
