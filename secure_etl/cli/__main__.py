"""``python -m secure_etl.cli``."""

import sys

from secure_etl.cli import main

if __name__ == "__main__":
    sys.exit(main())
