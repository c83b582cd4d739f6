"""How often ``sidekick fuzz --server`` finds each fault mode of the reference server, and how fast.

For every fault mode (and the correct server, the baseline: any finding there is a false alarm),
each binding and each seed: a fresh reference server process (under ``sidekick powercut`` for the
modes only a power cut shows), one black-box campaign with its restart, power-cut and restore
commands, stopped at the first violation or at the budget. Prints JSON: per mode and binding, the
seeds that found it and the seconds to the first violation. Wall-clock figures: compare runs made
on the same machine side by side.

Usage: python -m benchmarks.fuzz_server [--budget 30] [--seeds 5] [--modes a,b] [--bindings tcp,http]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import trio

from sidekick_testbed.emulator.certify.blackbox import blackbox_fuzz
from sidekick_testbed.emulator.certify.local_server import LocalServer
from sidekick_testbed.emulator.certify.target import Account
from sidekick_testbed.server_stub.faults import ALL_FAULT_MODES

POWER_CUT_ONLY = ("skip-fsync", "write-behind-2ms", "write-behind-10ms")


def campaign(mode: str | None, binding: str, seed: int, budget: float) -> dict[str, object]:
    traced = mode in POWER_CUT_ONLY
    with tempfile.TemporaryDirectory() as folder, \
            LocalServer(Path(folder), faults=(mode,) if mode else (), traced=traced) as server:
        port = server.http_port if binding == "http" else server.tcp_port
        report = trio.run(lambda: blackbox_fuzz(
            "127.0.0.1", port, seed=seed, budget_s=budget, http=binding == "http",
            account=Account("vendor", server.keys["vendor"]), restart_cmd=server.restart_cmd,
            power_cut_cmd=server.power_cut_cmd if traced else None, restore_cmd=server.restore_cmd,
            stop_at_first=True))
    return {"seed": seed, "found": not report.ok, "first_violation_s": report.first_violation_s,
            "sessions": report.sessions, "violation": report.violations[0][:200] if report.violations else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=30.0)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--modes", default="", help="comma separated (default: the correct server and every mode)")
    parser.add_argument("--bindings", default="tcp,http")
    args = parser.parse_args()
    modes: list[str | None] = [m for m in args.modes.split(",") if m] or [None, *ALL_FAULT_MODES]
    results = []
    for mode in modes:
        for binding in args.bindings.split(","):
            runs = [campaign(mode or None, binding, seed, args.budget) for seed in range(1, args.seeds + 1)]
            found = [r for r in runs if r["found"]]
            times = sorted(float(r["first_violation_s"]) for r in found)  # type: ignore[arg-type]
            row = {"mode": mode or "none (baseline: correct server)", "binding": binding, "budget_s": args.budget,
                   "found": f"{len(found)}/{len(runs)}",
                   "median_s_to_find": round(times[len(times) // 2], 1) if times else None,
                   "max_s_to_find": round(times[-1], 1) if times else None, "runs": runs}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "runs"}), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "fuzz --server detection", "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
