"""A Hypothesis state machine over the simulation world: failures shrink to a few readable steps.

Each rule adds one step (a user edit, a sync, a power cut, a server crash...) to a script; the
teardown runs the world on that script (then the heal phase) and fails with the run's story if
an invariant broke. Hypothesis then shrinks the steps. Run it with your own settings and example
database (docs/FUZZING.md shows a shared Redis database for CI)::

    from hypothesis import settings
    from sidekick_testbed.emulator.sim.stateful import machine_for
    from sidekick_testbed.emulator.sim.options import SimOptions

    Machine = machine_for(SimOptions(accounts=1, devices=3, mutant="mark-clean-on-push-ack"))
    TestMachine = Machine.TestCase
    TestMachine.settings = settings(max_examples=500, stateful_step_count=40)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from sidekick_testbed.emulator.sim.nemesis import Swarm
from sidekick_testbed.emulator.sim.options import SimOptions
from sidekick_testbed.emulator.sim.story import tell
from sidekick_testbed.emulator.sim.trace import to_trace
from sidekick_testbed.emulator.sim.world import World

__all__ = ["NETWORKS", "SidekickMachine", "machine_for"]

NETWORKS: dict[str, dict[str, float]] = {
    "clean": {},
    "lossy": {"drop": 0.01, "delay": 0.05, "reset": 0.01},
    "hostile": {"drop": 0.02, "corrupt": 0.02, "duplicate": 0.02, "truncate": 0.02, "stall": 0.02, "reset": 0.02},
}
"""Network fault presets a machine run picks from (per-chunk probabilities)."""

DEFAULT_OPTIONS = SimOptions(accounts=1, devices=2)


def machine_for(options: SimOptions = DEFAULT_OPTIONS) -> type[RuleBasedStateMachine]:
    """A state machine class over worlds with ``options`` (accounts, devices, mutant)."""
    devices = options.accounts * options.devices
    device = st.integers(0, devices - 1)

    class Machine(RuleBasedStateMachine):
        """Steps of one simulated run; the teardown runs it and checks every invariant."""

        def __init__(self) -> None:
            super().__init__()
            self.seed = 0
            self.network = "clean"
            self.flaky_power = False
            self.script: list[tuple[str, int]] = []

        @initialize(seed=st.integers(0, 2**32 - 1), network=st.sampled_from(sorted(NETWORKS)),
                    flaky_power=st.booleans())
        def start(self, seed: int, network: str, flaky_power: bool) -> None:
            self.seed, self.network, self.flaky_power = seed, network, flaky_power

        @rule(device=device)
        def user_edits(self, device: int) -> None:
            self.script.append(("user", device))

        @rule(device=device)
        def device_syncs(self, device: int) -> None:
            self.script.append(("sync", device))

        @rule()
        def time_passes(self) -> None:
            self.script.append(("wait", 0))

        @rule(device=device)
        def power_fails(self, device: int) -> None:
            self.script.append(("power-cut", device))

        @rule(device=device)
        def device_partitioned(self, device: int) -> None:
            self.script.append(("partition", device))

        @rule()
        def server_backup(self) -> None:
            self.script.append(("backup", 0))

        @rule()
        def server_crashes(self) -> None:
            self.script.append(("server-crash", 0))

        @rule()
        def server_restarts(self) -> None:
            self.script.append(("server-restart", 0))

        @rule()
        def server_restored_from_backup(self) -> None:
            self.script.append(("server-restore", 0))

        @rule()
        def clock_jumps(self) -> None:
            self.script.append(("clock-jump", 0))

        def teardown(self) -> None:
            kinds: dict[str, Any] = dict(NETWORKS[self.network])
            if self.flaky_power:
                kinds["power-cut"] = 1.0
            run_options = replace(options, steps=len(self.script), swarm=Swarm(kinds))
            result = World(self.seed, run_options, script=self.script).run()
            if result.violation is not None:
                story = tell(to_trace(result), limit=60)
                raise AssertionError(f"{result.violation.invariant}: {result.violation.text}\n{story}")

    Machine.__name__ = Machine.__qualname__ = "SidekickMachine"
    return Machine


SidekickMachine = machine_for()
"""The machine over one account with two handsets, correct device and server."""
