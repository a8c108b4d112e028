"""``python -m fastmlp``: the command line (see fastmlp.cli)."""

import sys

from fastmlp.cli import main

sys.exit(main())
