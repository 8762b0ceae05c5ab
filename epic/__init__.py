"""EPIC testbed: the shared library of every role (data, models, wire format, topology, CLI).

Role packages (``devices``, ``central``, ``emulation``) import ``epic``; ``epic`` never
imports them.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
