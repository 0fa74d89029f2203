"""``python -m vfmtok``: the ``vfmtok`` command (same as ``python -m vfmtok.cli.main``)."""

import sys

from .cli.main import main

sys.exit(main())
