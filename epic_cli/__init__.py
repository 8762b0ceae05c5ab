"""``epic``, the command line: a layer above the library (:mod:`epic`) and the roles
(:mod:`devices`, :mod:`central`, :mod:`emulation`). ``epic = "epic_cli:main"`` in
pyproject.toml; ``python -m epic_cli`` runs it too.
"""

from epic_cli.main import cli, main

__all__ = ["cli", "main"]
