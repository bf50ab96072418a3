"""``python -m backprobe``: the command line (see :mod:`backprobe.cli`)."""

import sys

from backprobe.cli import main

if __name__ == "__main__":
    sys.exit(main())
