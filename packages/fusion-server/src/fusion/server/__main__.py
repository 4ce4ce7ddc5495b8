"""``python -m fusion.server``: the ``fusion-server`` command."""

import sys

from fusion.server.cli import main

if __name__ == "__main__":
    sys.exit(main())
