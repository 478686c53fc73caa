"""``python -m keras_hybrid_interp`` runs the command line (default: the demo)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
