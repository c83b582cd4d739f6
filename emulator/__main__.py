"""``python -m emulator`` runs the ``sidekick`` command."""

import sys

from emulator.cli import main

sys.exit(main())
