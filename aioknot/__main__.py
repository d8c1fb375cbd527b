"""``python -m aioknot``: the ``aioknot`` command (see aioknot._cli)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
