"""``python -m npufarm ...`` is the ``npufarm`` command."""

import sys

from npufarm.cli import main

if __name__ == "__main__":
    sys.exit(main())
