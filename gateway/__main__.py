"""``python -m gateway`` is the ``popgate`` command."""

import sys

from gateway.cli.main import main

sys.exit(main())
