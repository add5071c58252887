"""`python -m hashsvc ...`: the command line (hashsvc/client/cli.py)."""

import sys

from hashsvc.client.cli import main

sys.exit(main())
