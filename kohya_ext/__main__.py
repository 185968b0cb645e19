"""`python -m kohya_ext ...` runs the kohya-ext command line."""

import sys

from .cli import main

sys.exit(main())
