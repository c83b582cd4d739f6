"""A pytest run in a subprocess with the certify plugin loaded, for the plugin's tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PLUGIN_ARGS = ["-p", "no:sidekick", "-p", "sidekick_testbed.emulator.certify.pytest_plugin"]
"""Load the plugin by module name whether or not its entry point is installed."""


def run_pytest(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m pytest`` with the plugin and ``args``, run in ``cwd``; its output captured, unchecked."""
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(cwd),
                           *PLUGIN_ARGS, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
