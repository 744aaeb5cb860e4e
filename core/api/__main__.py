"""``python -m core.api``: the same as ``python -m core serve``."""

import sys

from core.api.command import main

sys.exit(main())
