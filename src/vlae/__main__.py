"""``python -m vlae``: the same as the ``vlae`` command."""

import sys

from .cli import main

sys.exit(main())
