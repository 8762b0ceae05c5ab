"""Exception types shared by every role.

- `InputError` marks bad input from outside the program (a file, a field, an argument, a frame).
  Its message must name the bad value and where it came from.
- `RunError` marks a failure while running, with good input: a role exited, the testbed did
  not become healthy, an agent failed, results did not come in time. Its message says what
  failed and where to look (a log file).

The CLI turns each into one line on stderr, ``epic: error: ...``, never a traceback, with its
own exit status (:data:`EXIT_STATUS`): 2 for bad input, 1 for a run-time failure.
"""

__all__ = ["EXIT_STATUS", "DataError", "InputError", "RunError"]


class InputError(ValueError):
    """Bad input from outside: the message names the value and its source."""


class DataError(InputError):
    """A data file (OpenFWI shard, velocity-map archive, dataset card) is missing or invalid."""


class RunError(RuntimeError):
    """A failure while running (a role exited, a wait timed out): the message says what failed
    and where its log is."""


EXIT_STATUS: dict[type[Exception], int] = {InputError: 2, RunError: 1}
"""The CLI's exit status for each error type (bad input 2, as for usage errors)."""
