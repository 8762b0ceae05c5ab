"""Exception types shared by every role.

`InputError` marks bad input from outside the program (a file, a field, an argument, a frame).
The CLI turns it into one line on stderr and exit status 2, never a traceback. Its message must
name the bad value and where it came from.
"""

__all__ = ["DataError", "InputError"]


class InputError(ValueError):
    """Bad input from outside: the message names the value and its source."""


class DataError(InputError):
    """A data file (OpenFWI shard, velocity-map archive, dataset card) is missing or invalid."""
