"""Conformance and durability suite for sync servers (``sidekick certify``).

Passing it is evidence that a server meets docs/PROTOCOL.md where the checks look, not a
certification by anyone.
"""

from __future__ import annotations

import importlib

from sidekick_testbed.emulator.certify.framework import REGISTRY, Check

__all__ = ["CHECK_MODULES", "all_checks"]

CHECK_MODULES = (
    "sidekick_testbed.emulator.certify.checks_session",
    "sidekick_testbed.emulator.certify.checks_framing",
    "sidekick_testbed.emulator.certify.checks_sync",
    "sidekick_testbed.emulator.certify.checks_pull",
    "sidekick_testbed.emulator.certify.checks_conflict",
    "sidekick_testbed.emulator.certify.checks_blob",
    "sidekick_testbed.emulator.certify.checks_limits",
    "sidekick_testbed.emulator.certify.checks_durability",
    "sidekick_testbed.emulator.certify.checks_http",
)


def all_checks() -> dict[str, Check]:
    """Every registered check by id (importing the check modules registers them)."""
    for name in CHECK_MODULES:
        importlib.import_module(name)
    return REGISTRY
