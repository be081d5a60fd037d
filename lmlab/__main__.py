"""``python -m lmlab COMMAND key=value ...``: see ``lmlab.cli`` (``python -m lmlab --help`` lists the commands)."""

import sys

from lmlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
