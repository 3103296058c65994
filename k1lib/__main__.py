"""``python -m k1lib [FOLDER]``: the demo (see ``k1lib._demo``)."""

import sys

from ._demo import main

sys.exit(main())
