"""``python -m autotransfer`` runs the command line."""

import sys

from autotransfer.cli.main import main

sys.exit(main())
