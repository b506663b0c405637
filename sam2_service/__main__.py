"""``python -m sam2_service``: the same as the ``sam2-service`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
