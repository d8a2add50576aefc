"""``python -m athos_load`` is ``athos-load``."""

import sys

from .cli import main

sys.exit(main())
