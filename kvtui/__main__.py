"""``python -m kvtui`` is the ``kvtui`` command."""

import sys

from .cli import main

sys.exit(main())
