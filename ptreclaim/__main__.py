"""``python -m ptreclaim``: see ptreclaim.cli."""

import sys

from .cli import main

sys.exit(main())
