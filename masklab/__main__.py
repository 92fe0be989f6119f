"""`python -m masklab ...` is the `masklab` command."""

import sys

from masklab.cli import main

sys.exit(main())
