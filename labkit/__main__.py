"""``python -m labkit`` is the ``labkit`` command (useful under ``torchrun``)."""

import sys

from labkit.cli import main

sys.exit(main())
