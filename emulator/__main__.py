"""``python -m sidekick_testbed.emulator`` runs the ``sidekick`` command."""

import sys

from sidekick_testbed.emulator.cli import main

sys.exit(main())
