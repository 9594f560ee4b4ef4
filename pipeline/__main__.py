"""``python -m pipeline`` is the ``clustermass`` command."""

import sys

from pipeline.cli import main

sys.exit(main())
