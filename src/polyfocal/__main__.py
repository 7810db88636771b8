"""``python -m polyfocal ...``: the same as the ``polyfocal`` command."""

import sys

from .cli import main

sys.exit(main())
