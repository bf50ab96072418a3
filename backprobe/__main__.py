"""``python -m backprobe``: the command line (see :mod:`backprobe.app.cli`)."""

import sys

from backprobe.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
