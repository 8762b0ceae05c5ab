"""``python -m central``: the same as ``python -m central.service``."""

import sys

from central.service import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
