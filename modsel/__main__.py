"""``python -m modsel``: the same as the ``modsel`` command."""

import sys

from ._cli import main

sys.exit(main())
