"""ptreclaim: Linux user page tables and PT reclaim, simulated as the kernel keeps them.

``import ptreclaim`` uses the compiled core; with PTRECLAIM_PURE_PYTHON=1 in the
environment it uses the pure-Python reference model instead (same API).
"""

import os as _os

from ptreclaim.constants import *  # noqa: F401,F403
from ptreclaim.errors import (  # noqa: F401
    BusError, InvariantError, OutOfMemory, SegmentationFault, UserfaultfdFault,
)

if _os.environ.get("PTRECLAIM_PURE_PYTHON") == "1":
    from ptreclaim._reference import MM, File, Machine  # noqa: F401

    IMPLEMENTATION = "reference"
else:
    from ptreclaim._core import MM, File, Machine  # noqa: F401

    IMPLEMENTATION = "core"

__version__ = "0.1.0"
