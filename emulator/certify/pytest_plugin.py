"""pytest plugin: ``pytest --sidekick-server HOST:PORT`` runs each certify check as a test item.

Items are named by requirement id and check id (``R-PULL-8[pull-anchor-needs-ack]``). A failed
MUST check fails its item; a failed SHOULD or MAY check is an expected failure (xfail), as are
checks listed in ``--sidekick-expected-failures``; an inconclusive check is skipped (failed with
``--sidekick-strict``). Without ``--sidekick-server`` the plugin adds nothing and imports nothing
of the suite. Passing is evidence of conformance, not a certification by anyone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sidekick_testbed.emulator.certify.framework import Check, CheckResult
    from sidekick_testbed.emulator.certify.target import Target

__all__ = ["pytest_addoption", "pytest_collection_modifyitems"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options of the plugin (all inert unless ``--sidekick-server`` is given)."""
    group = parser.getgroup("sidekick", "sidekick certify (conformance suite against a server)")
    group.addoption("--sidekick-server", metavar="HOST:PORT", default=None,
                    help="run the certify checks against this server, one test item per check")
    group.addoption("--sidekick-http", action="store_true", default=False, help="use the HTTP binding")
    group.addoption("--sidekick-account", action="append", default=[], metavar="ID", help="account (repeatable)")
    group.addoption("--sidekick-key-file", action="append", default=[], metavar="F",
                    help="hex key file of each --sidekick-account, in order")
    group.addoption("--sidekick-restart-cmd", default=None, metavar="CMD", help="kill -9 and restart the server")
    group.addoption("--sidekick-restore-cmd", default=None, metavar="CMD", help="restore a backup and restart")
    group.addoption("--sidekick-power-cut-cmd", default=None, metavar="CMD",
                    help="cut the server's power (unsynced writes lost) and restart")
    group.addoption("--sidekick-profile", default="all", choices=("must", "should", "all"), help="levels to run")
    group.addoption("--sidekick-only", action="append", default=[], metavar="PATTERN", help="glob on check ids")
    group.addoption("--sidekick-expected-failures", default=None, metavar="FILE", help="baseline of expected failures")
    group.addoption("--sidekick-strict", action="store_true", default=False, help="inconclusive checks fail")
    group.addoption("--sidekick-timeout", type=float, default=5.0, metavar="S", help="seconds per answer")
    group.addoption("--sidekick-seed", type=int, default=None, help="seed (default: random)")


class CheckFailure(Exception):
    """A MUST check failed; carries the rendered message and evidence."""


class CertifyCollector(pytest.Collector):
    """The container of the check items."""

    def collect(self) -> Iterator[pytest.Item]:
        from sidekick_testbed.emulator.certify import all_checks
        from sidekick_testbed.emulator.certify.framework import select

        only = self.config.getoption("--sidekick-only")
        for item_check in select(all_checks().values(), only=only):
            yield CheckItem.from_parent(self, name=item_check.name, check=item_check)


class CheckItem(pytest.Item):
    """One certify check as a test item."""

    def __init__(self, *, check: Check, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        for requirement in check.requirements:
            self.user_properties.append(("requirement", requirement))

    def runtest(self) -> None:
        import trio

        from sidekick_testbed.emulator.certify import all_checks
        from sidekick_testbed.emulator.certify.framework import PROFILES
        from sidekick_testbed.emulator.certify.runner import HANDSHAKE_ID, is_expected, run_check, unmet_needs
        from sidekick_testbed.emulator.certify.verdicts import Level, Outcome

        config = self.config
        profile = config.getoption("--sidekick-profile")
        if self.check.level not in PROFILES[profile]:
            pytest.skip(f"{self.check.level.value} check, not in profile {profile!r}")
        target = _target(config)
        unmet = unmet_needs(self.check, target)
        if unmet is not None:
            if unmet[0] is Outcome.INCONCLUSIVE and config.getoption("--sidekick-strict"):
                raise CheckFailure(f"inconclusive: {unmet[1]}")
            pytest.skip(unmet[1])
        seed = config.stash[_SEED]
        if self.check.id != HANDSHAKE_ID and target.accounts:
            if _GATE not in config.stash:
                handshake = all_checks()[HANDSHAKE_ID]
                config.stash[_GATE] = trio.run(lambda: run_check(handshake, target, seed=seed))
            gate = config.stash[_GATE]
            if gate.outcome is not Outcome.PASS:
                if not config.stash.get(_GATE_REPORTED, False):  # the first item carries the reason
                    config.stash[_GATE_REPORTED] = True
                    raise CheckFailure(_render(gate, "failed, so no check can run"))
                message = f"not run: no session could be established ({gate.message})"
                if config.getoption("--sidekick-strict"):
                    raise CheckFailure(f"inconclusive: {message}")
                pytest.skip(message)
        result: CheckResult = trio.run(lambda: run_check(self.check, target, seed=seed))
        if self.check.id == HANDSHAKE_ID:
            config.stash[_GATE] = result
            config.stash[_GATE_REPORTED] = True
        expected = config.stash[_EXPECTED]
        if result.outcome is Outcome.PASS:
            return
        if result.outcome is Outcome.INCONCLUSIVE:
            if config.getoption("--sidekick-strict"):
                raise CheckFailure(_render(result, "inconclusive"))
            pytest.skip(f"inconclusive: {result.message}")
        if result.outcome is Outcome.SKIPPED:
            pytest.skip(result.message)
        if is_expected(self.check, expected):
            pytest.xfail(f"listed as an expected failure: {result.message}")
        if self.check.level is not Level.MUST:
            pytest.xfail(f"{self.check.level.value} check failed: {result.message}")
        raise CheckFailure(_render(result, "failed"))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, CheckFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[str, int | None, str]:
        return "sidekick-certify", None, f"{self.check.name}: {self.check.title}"


def _render(result: CheckResult, what: str) -> str:
    lines = [f"{result.check.name} {what}: {result.message}",
             f"requirements: {', '.join(result.check.requirements)} ({result.check.level.value})"]
    if result.evidence:
        lines.append("evidence (frames exchanged, last ones):")
        lines += [f"  {entry.render()}" for entry in result.evidence]
    return "\n".join(lines)


_SEED = pytest.StashKey[int]()
_EXPECTED = pytest.StashKey[frozenset[str]]()
_TARGET = pytest.StashKey["Target"]()
_GATE = pytest.StashKey["CheckResult"]()
"""The result of the handshake check, run once before the first other item."""
_GATE_REPORTED = pytest.StashKey[bool]()


def _target(config: pytest.Config) -> Target:
    return config.stash[_TARGET]


def _build_target(config: pytest.Config) -> Target:
    from sidekick_testbed.emulator.certify.target import TargetError, target_from_options

    try:
        return target_from_options(
            config.getoption("--sidekick-server"), http=config.getoption("--sidekick-http"),
            accounts=config.getoption("--sidekick-account"), key_files=config.getoption("--sidekick-key-file"),
            restart_cmd=config.getoption("--sidekick-restart-cmd"),
            restore_cmd=config.getoption("--sidekick-restore-cmd"),
            power_cut_cmd=config.getoption("--sidekick-power-cut-cmd"),
            timeout=config.getoption("--sidekick-timeout"), ready_timeout=30.0,
        )
    except TargetError as exc:
        raise pytest.UsageError(f"--sidekick-server: {exc.message}") from None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Append the check items when ``--sidekick-server`` is given; otherwise do nothing."""
    if not config.getoption("--sidekick-server"):
        return
    import secrets

    from sidekick_testbed.emulator.certify.runner import load_expected_failures

    config.stash[_TARGET] = _build_target(config)
    seed = config.getoption("--sidekick-seed")
    config.stash[_SEED] = seed if seed is not None else secrets.randbits(32)
    path = config.getoption("--sidekick-expected-failures")
    try:
        config.stash[_EXPECTED] = load_expected_failures(Path(path)) if path else frozenset()
    except (OSError, UnicodeDecodeError) as exc:
        raise pytest.UsageError(f"--sidekick-expected-failures: cannot read {path}: {exc}") from None
    collector = CertifyCollector.from_parent(session, name="sidekick-certify")
    items.extend(collector.collect())


def pytest_report_header(config: pytest.Config) -> str | None:
    """One header line naming the server, the seed and the disclaimer."""
    server = config.getoption("--sidekick-server")
    if not server:
        return None
    return (f"sidekick certify against {server}: passing is evidence of conformance, "
            "not a certification by anyone")
