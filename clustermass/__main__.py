"""``python -m clustermass`` is the ``clustermass`` command."""

import sys

from clustermass.cli import main

sys.exit(main())
