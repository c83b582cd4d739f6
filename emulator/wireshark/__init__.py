"""The Wireshark dissector shipped with the package (``sidekick.lua``), and where Wireshark looks
for personal Lua plugins (docs/WIRESHARK.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

__all__ = ["DISSECTOR", "dissector_path", "install", "personal_plugin_dir"]

DISSECTOR = "sidekick.lua"


def dissector_path() -> Path:
    """The shipped dissector file."""
    return Path(str(resources.files("sidekick_testbed.emulator.wireshark").joinpath(DISSECTOR)))


def _asked_tshark() -> Path | None:
    """The personal Lua plugins folder as the installed tshark reports it (None without tshark)."""
    tshark = shutil.which("tshark")
    if tshark is None:
        return None
    try:
        out = subprocess.run([tshark, "-G", "folders"], capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Personal Lua Plugins" and value.strip():
            return Path(value.strip())
    return None


def personal_plugin_dir() -> Path:
    """Wireshark's personal Lua plugins folder: tshark's answer, else the platform's default
    (``%APPDATA%\\Wireshark\\plugins`` on Windows, ``~/.local/lib/wireshark/plugins`` elsewhere)."""
    asked = _asked_tshark()
    if asked is not None:
        return asked
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "Wireshark" / "plugins"
    return Path.home() / ".local" / "lib" / "wireshark" / "plugins"


def install(folder: Path | None = None) -> Path:
    """Copy the dissector into ``folder`` (default: ``personal_plugin_dir()``); returns the copy."""
    target_dir = folder if folder is not None else personal_plugin_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / DISSECTOR
    shutil.copyfile(dissector_path(), target)
    return target
