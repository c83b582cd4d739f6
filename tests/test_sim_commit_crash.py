"""The ``commit-crash`` nemesis: the server dies after a commit is durable and before its DURABLE is
sent, and a correct server recognises the handset's retransmit on its next session as a duplicate."""

from __future__ import annotations

from typing import Any

import pytest

from sidekick_testbed.emulator.sim.nemesis import Swarm
from sidekick_testbed.emulator.sim.options import SimOptions
from sidekick_testbed.emulator.sim.world import run_world

SEEDS = range(1, 13)


def unanswered_durable_commits(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(device, LSN) of each COMMIT the server made durable but never answered: the device's COMMIT
    got no answer before the server crashed, and its next HELLO_OK reports the LSN durable."""
    pending: dict[str, int] = {}
    cut: dict[str, int] = {}
    found: list[tuple[str, int]] = []
    for event in events:
        if event["kind"] == "server.down":
            if event["why"] == "crash":
                cut.update(pending)
            pending.clear()
        elif event["kind"] == "msg":
            device, message = event["dev"], event["m"]
            if event["dir"] == "sent" and message == "COMMIT":
                pending[device] = event["lsn"]
            elif event["dir"] == "received":
                pending.pop(device, None)
                if message == "HELLO_OK" and device in cut:
                    lsn = cut.pop(device)
                    if event["durable"] >= lsn:
                        found.append((device, lsn))
    return found


def retransmits_answered(events: list[dict[str, Any]], device: str, lsn: int) -> bool:
    """After the crash, ``device`` pushed LSN ``lsn`` again and got a DURABLE that covers it."""
    pushed_again = False
    for event in events:
        if event["kind"] != "msg" or event["dev"] != device:
            continue
        if event["m"] == "PUSH" and any(change[0] == lsn for change in event["changes"]):
            pushed_again = True
        elif pushed_again and event["m"] == "DURABLE" and event["lsn"] >= lsn:
            return True
    return False


@pytest.mark.parametrize("backend", ["sim", "sqlite"])
def test_the_server_crashes_between_a_commit_and_its_durable_and_the_retransmit_is_a_duplicate(
        backend: str) -> None:
    options = SimOptions(steps=40, swarm=Swarm({"commit-crash": 1.0}), backend=backend)
    crashed_seeds = 0
    for seed in SEEDS:
        result = run_world(seed, options)
        assert result.violation is None, (seed, result.violation)
        cut = unanswered_durable_commits(result.events)
        if cut:
            crashed_seeds += 1
            for device, lsn in cut:
                assert retransmits_answered(result.events, device, lsn), (seed, device, lsn)
    assert crashed_seeds >= len(SEEDS) // 2, crashed_seeds  # 9 of 12 on either backend when written

