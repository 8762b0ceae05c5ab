"""``python -m epic_cli``: the ``epic`` command."""

import sys

from epic_cli.main import main

sys.exit(main())
