"""`python -m pipeline` is the `psec` command."""

import sys

from pipeline.cli import main

sys.exit(main())
