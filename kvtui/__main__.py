"""``python -m kvtui`` is the ``kvtui`` command."""

import sys

from kvtui.cli import main

sys.exit(main())
