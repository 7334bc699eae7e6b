"""``python -m gateway`` is the ``popgate`` command."""

import sys

from gateway.cli import main

sys.exit(main())
