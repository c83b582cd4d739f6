"""How often the durability checks catch a server that writes behind its DURABLE (2 ms and 10 ms).

Three ways to crash the server after a change is confirmed, each tried ``--trials`` times per
window against the reference server with fault ``write-behind-2ms`` or ``write-behind-10ms``:

* ``after`` (the baseline, the suite's former way): the restart command is started once the
  DURABLE has been read;
* ``armed`` (``durable-survives-restart`` now): the command is started ahead, held on its stdin,
  and released the moment the DURABLE arrives, so only the kill itself is left to do;
* ``power-cut`` (``durable-survives-power-cut``): the server runs under ``sidekick powercut``,
  which cuts at the DURABLE in the trace, however short the window.

A trial is caught when the confirmed change is missing after the restart in the same generation.
The correct server is run the same way as a control (a catch there would be a false alarm).
Prints JSON. Wall-clock dependent: the machine's load moves the first two rates.

Usage: python -m benchmarks.write_behind [--trials 20]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import trio

from sidekick_testbed.emulator.certify.changes import note_change
from sidekick_testbed.emulator.certify.client import Trace
from sidekick_testbed.emulator.certify.context import CheckContext
from sidekick_testbed.emulator.certify.local_server import LocalServer


async def trial(server: LocalServer, method: str, seed: int) -> bool:
    target = server.target(accounts=1)
    ctx = CheckContext(target, random.Random(seed), Trace())
    try:
        device = ctx.device()
        session = await ctx.session(device)
        generation = session.generation
        change = note_change(device.lsn(), ctx.new_id(), "write-behind trial")
        if method == "after":
            _, durable = await session.push_commit([change])
            await ctx.run_command(server.restart_cmd, "restart")
        else:
            command = server.power_cut_cmd if method == "power-cut" else server.restart_cmd
            armed = await ctx.arm_command(command, method)
            _, durable = await session.push_commit([change], on_durable=armed.fire)
            await armed.finish()
        version = next(a.version for a in durable.assigned if a.lsn == change.lsn)
        after = await ctx.wait_ready(device)
        if after.generation != generation:
            return False
        heads, _ = await after.pull_all(version - 1, tolerate_bad_anchor=True)
        return change.record.record_id not in heads
    finally:
        await ctx.aclose()


def rates(mode: str | None, method: str, trials: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder, \
            LocalServer(Path(folder), faults=(mode,) if mode else (), traced=method == "power-cut") as server:
        caught = sum(trio.run(trial, server, method, seed) for seed in range(trials))
    return {"mode": mode or "none (control)", "method": method, "caught": f"{caught}/{trials}",
            "rate": round(caught / trials, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    rows = [rates(mode, method, args.trials)
            for mode in ("write-behind-2ms", "write-behind-10ms", None)
            for method in ("after", "armed", "power-cut")]
    print(json.dumps({"benchmark": "write-behind catch rate", "trials": args.trials, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
