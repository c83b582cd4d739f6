"""Conformance and durability suite for sync servers (``sidekick certify``).

Passing it is evidence that a server meets docs/PROTOCOL.md where the checks look, not a
certification by anyone.

The checks: async functions in the ``checks_*`` modules, one module a topic (``checks_session``,
``_framing``, ``_sync`` for receipts and idempotence, ``_pull``, ``_conflict``, ``_blob``,
``_limits``, ``_durability``, ``_http``), each registered by the ``framework.check`` decorator with
its id, requirement ids, level and group; a new module of checks is listed in ``CHECK_MODULES``.
Checks run in the order of ``framework.GROUP_ORDER``, within a group in the order registered.

What a check uses, bottom up (each imports only those before it): ``verdicts`` (Level, Need,
Fail, Inconclusive, ``expect``), ``target`` (the server under test), ``client`` (the recorded wire
client), ``answers`` (judging the server's answers), ``context`` (``CheckContext``, ``Session``),
``changes`` (what a check pushes), ``framework`` (the registry, results, selection). Running them:
``runner``, ``report``, ``coverage``, the ``pytest_plugin``. Beside the checks: ``blackbox`` (fuzzing
a running server), ``powercut`` (power cuts of a server under test), ``local_server`` (the
reference server as a process), ``malformed`` (the malformed-frame vectors).
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
