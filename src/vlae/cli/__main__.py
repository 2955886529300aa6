"""``python -m vlae.cli``: the same as the ``vlae`` command."""

import sys

from . import main

sys.exit(main())
