"""Conformance and durability suite for sync servers (``sidekick certify``).

Passing it is evidence that a server meets docs/PROTOCOL.md where the checks look, not a
certification by anyone.
"""

from __future__ import annotations

import importlib

from emulator.certify.framework import REGISTRY, Check

__all__ = ["CHECK_MODULES", "all_checks"]

CHECK_MODULES = (
    "emulator.certify.checks_session",
    "emulator.certify.checks_framing",
    "emulator.certify.checks_sync",
    "emulator.certify.checks_limits",
    "emulator.certify.checks_durability",
    "emulator.certify.checks_http",
)


def all_checks() -> dict[str, Check]:
    """Every registered check by id (importing the check modules registers them)."""
    for name in CHECK_MODULES:
        importlib.import_module(name)
    return REGISTRY
