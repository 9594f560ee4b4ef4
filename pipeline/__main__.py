"""``python -m pipeline`` is the ``clustermass`` command (kept for scripts written before ``python -m clustermass``).

An entry script, not a module anything imports: it is the one place under ``pipeline/`` that may reach the top.
"""

import sys

from clustermass.cli import main

sys.exit(main())
