"""`python -m normkit` is the `normkit` console command."""

import sys

from normkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
