"""Entry point of ``python -m backmatch``."""

import sys

from backmatch.cli import main

sys.exit(main())
