"""The Hypothesis state machine over the simulation world (runs under the loaded profile, ``ci``)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from sidekick_testbed.emulator.sim.options import SimOptions
from sidekick_testbed.emulator.sim.stateful import SidekickMachine, machine_for

TestSidekickMachine = SidekickMachine.TestCase
TestSidekickMachine.settings = settings(stateful_step_count=12)


def test_the_machine_finds_a_planted_bug_and_shrinks_it_to_a_few_steps() -> None:
    machine = machine_for(SimOptions(accounts=1, devices=1, mutant="mark-clean-on-push-ack"))
    with pytest.raises(AssertionError) as caught:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=60, stateful_step_count=6, database=None, deadline=None, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow]))
    message = str(caught.value)
    assert "discard-before-durable" in message and "INVARIANT BROKEN" in message
    # shrunk: a user edit and a sync are all it takes
    assert message.count("user adds") + message.count("user edits") <= 2
