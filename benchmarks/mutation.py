"""Mutation score of the durability-critical code, with generated mutants (cosmic-ray); prints JSON.

Hand-planted mutants (``sidekick fuzz --list-mutants``) show the bugs we thought of. This script lets
cosmic-ray generate mutants of the record store, the sync client, the server's session handler
and both storage backends (every operator cosmic-ray has: comparisons, boolean and arithmetic
operators, numbers, ``break``/``continue``, exceptions, removed decorators...) and asks a killer
whether it notices each one:

- ``fuzz`` (default): a ``sidekick fuzz`` campaign of ``--budget`` (default 300 runs, about 60 s on a
  free core, the same campaign however loaded the machine) from ``--start``; a mutant is killed when
  the campaign reports a violation (exit 1) or fails (exit 2);
- ``tests``: the test files that exercise the mutated file (``TESTS``), stopping at the first failure.

cosmic-ray rewrites the files it mutates, so everything runs in a copy of the source tree (under
``--work``, kept so that an interrupted measurement resumes with ``--resume``), laid out as installed:
``--work/src/sidekick_testbed`` is the repository, ``--work/src`` leads the killer's ``PYTHONPATH``, so
``sidekick_testbed.emulator`` is the copy's ``emulator/`` and not the installed one. Before measuring,
the script imports the mutated modules and the killer's entry point in the killer's environment and
refuses (exit status 2) if any module of the project comes from outside the copy. Generated mutants
run to thousands and a surviving one costs the whole budget, so ``--sample N`` draws N mutants per
file (seeded by ``--seed``; ``0`` runs them all). Survivors are triaged in docs/FUZZING.md
("Mutation score"); ``benchmarks/mutation_triage.json`` names the equivalent ones, which the kill
rate leaves out; ``blind-spot-closed`` ones survived this measurement's fuzzer and are killed by
today's (``kill_rate_non_equivalent_with_closed`` counts them as killed). Long: run it under ``nice``.

    python benchmarks/mutation.py --sample 12 --budget 300-runs       # the fuzzer as killer
    python benchmarks/mutation.py --sample 12 --killer tests          # the test suite as killer
    python benchmarks/mutation.py --files store --sample 0 --budget 50-runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "sidekick_testbed"
"""The name the repository installs as (pyproject's ``package-dir``)."""
KILLER_ENTRY = [f"{PACKAGE}.emulator.cli", f"{PACKAGE}.emulator.cli.fuzz"]
"""What the fuzz killer starts from; with the mutated modules, what the copy must provide."""
FILES = {
    "store": "emulator/store",
    "sync_client": "emulator/handset/sync_client.py",
    "handler": "server_stub/handler.py",
    "sim_storage": "server_stub/sim_storage.py",
    "sqlite_storage": "server_stub/sqlite_storage.py",
}
ALSO = {"sqlite_storage": ["server_stub/sqlite_commit.py", "server_stub/sqlite_schema.py"]}
"""Modules mutated with a key's path and counted under it: the parts split out of one file."""
EXCLUDED = {"store": ["emulator/store/model.py", "emulator/store/powerloss.py"]}
"""Modules under a mutated package that are test machinery, not the code under test."""
TESTS = {
    "store": ["tests/test_store.py", "tests/test_store_stateful.py", "tests/test_powerloss.py",
              "tests/test_flash_reader.py", "tests/test_flash_compact.py"],
    "sync_client": ["tests/test_sync_client.py", "tests/test_handset.py", "tests/test_sync_interruptions.py",
                    "tests/test_scenario_2009.py"],
    "handler": ["tests/test_server_sessions.py", "tests/test_server_faults.py", "tests/test_server_http.py",
                "tests/test_server_crash.py"],
    "sim_storage": ["tests/test_server_storage_contract.py", "tests/test_server_faults.py",
                    "tests/test_server_crash.py"],
    "sqlite_storage": ["tests/test_server_storage_contract.py", "tests/test_server_faults.py",
                       "tests/test_server_crash.py"],
}
TRIAGE = Path(__file__).with_name("mutation_triage.json")


def copy_tree(work: Path) -> Path:
    """The tracked files of the repository (as they are in the work tree) under ``work/src/sidekick_testbed``.

    The repository is the package ``sidekick_testbed`` (pyproject's ``package-dir``), so with ``work/src``
    on the path the copy's folders are its subpackages. Returns the copy's root.
    """
    src = work / "src"
    if src.exists():
        shutil.rmtree(src)
    copy = src / PACKAGE
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in listed.decode().split("\0"):
        if not name or not (ROOT / name).is_file():
            continue
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return copy


def killer_env(copy: Path) -> dict[str, str]:
    """The environment of cosmic-ray and the killer: the copy's parent leads the path (no stale bytecode)."""
    return {**os.environ, "PYTHONPATH": str(copy.parent), "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}


def mutated_modules(copy: Path, keys: list[str]) -> list[str]:
    """The dotted names of the modules cosmic-ray mutates for ``keys``, in the copy ``copy``."""
    names = []
    for key in keys:
        excluded = set(EXCLUDED.get(key, []))
        for path in [FILES[key], *ALSO.get(key, [])]:
            files = sorted((copy / path).rglob("*.py")) if (copy / path).is_dir() else [copy / path]
            for file in files:
                relative = file.relative_to(copy)
                if relative.as_posix() not in excluded:
                    parts = relative.with_suffix("").parts
                    names.append(".".join((PACKAGE, *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return names


_PROBE = """import importlib, json, sys
package, *names = sys.argv[1:]
for name in names:
    importlib.import_module(name)
print(json.dumps({name: getattr(module, "__file__", None) for name, module in sys.modules.items()
                  if name.split(".")[0] == package}))
"""


def imported_from_outside(copy: Path, env: dict[str, str], modules: list[str]) -> list[str]:
    """What the killer's environment imports of the project from outside ``copy``: ``module (path)`` each.

    Found by behaviour: a Python started as the killer is (same environment, same directory) imports
    ``modules`` and names the file of every module of the project it loaded. Raises ImportError (the
    probe's last line of error) when one of ``modules`` cannot be imported there.
    """
    probe = subprocess.run([sys.executable, "-c", _PROBE, PACKAGE, *modules], cwd=copy, env=env, capture_output=True,
                           text=True)
    if probe.returncode != 0:
        raise ImportError((probe.stderr.strip().splitlines() or ["the probe failed without a word"])[-1])
    files: dict[str, str | None] = json.loads(probe.stdout)
    inside = copy.resolve()
    return [f"{name} ({file})" for name, file in sorted(files.items())
            if file is not None and not Path(file).resolve().is_relative_to(inside)]


def refusal(copy: Path, env: dict[str, str], keys: list[str]) -> str | None:
    """Why the killer would not run the mutants of ``keys`` made in ``copy`` (one line), or None."""
    try:
        outside = imported_from_outside(copy, env, [*KILLER_ENTRY, *mutated_modules(copy, keys)])
    except ImportError as exc:
        return f"the killer cannot import the copy in {copy}: {exc}"
    if outside:
        return f"the killer would not run the mutated copy in {copy}: it imports {', '.join(outside)}"
    return None


def _command(killer: str, key: str, args: argparse.Namespace, work: Path) -> str:
    python = sys.executable
    if killer == "fuzz":
        return (f"{python} -m {PACKAGE}.emulator fuzz --budget {args.budget} --seed {args.start} --no-shrink "
                f"--out {work / 'fuzz-out'}")
    return f"{python} -m pytest -x -q -p no:cacheprovider -p no:randomly {' '.join(TESTS[key])}"


def _config(path: Path, module: str | list[str], excluded: list[str], command: str, timeout: float) -> None:
    path.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(module)}\n"
        f"timeout = {timeout}\n"
        f"excluded-modules = {json.dumps(excluded)}\n"
        f"test-command = {json.dumps(command)}\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )


def _triage() -> dict[str, str]:
    if not TRIAGE.exists():
        return {}
    data: dict[str, str] = json.loads(TRIAGE.read_text())
    return data


def _mutant_key(file: str, diff: str) -> str:
    """A mutant's name that survives edits elsewhere in the file: the file and its changed lines."""
    lines = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    return file + "::" + " | ".join(line.strip() for line in lines)


def run_file(key: str, args: argparse.Namespace, work: Path, copy: Path, env: dict[str, str]) -> dict[str, Any]:
    """Initialise (or resume) the cosmic-ray session of one file, sample it, run it, count."""
    from cosmic_ray.work_db import WorkDB, use_db  # noqa: PLC0415
    from cosmic_ray.work_item import WorkerOutcome, WorkResult  # noqa: PLC0415

    module = FILES[key]
    config = work / f"{key}-{args.killer}.toml"
    session = work / f"{key}-{args.killer}.sqlite"
    paths = [module, *ALSO[key]] if key in ALSO else module
    _config(config, paths, EXCLUDED.get(key, []), _command(args.killer, key, args, work), args.timeout)
    if not (args.resume and session.exists()):
        session.unlink(missing_ok=True)
        subprocess.run(["cosmic-ray", "init", str(config), str(session)], cwd=copy, env=env, check=True,
                       capture_output=True)
        with use_db(str(session), WorkDB.Mode.open) as db:
            items = sorted(db.work_items, key=lambda item: item.job_id)
            generated = len(items)
            keep = items if args.sample == 0 else random.Random(f"{args.seed}/{key}").sample(
                items, min(args.sample, len(items)))
            chosen = {item.job_id for item in keep}
            db.set_multiple_results([item.job_id for item in items if item.job_id not in chosen],
                                    WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
        (work / f"{key}-{args.killer}.generated").write_text(str(generated))
    generated = int((work / f"{key}-{args.killer}.generated").read_text())
    started = time.monotonic()
    subprocess.run(["cosmic-ray", "exec", str(config), str(session)], cwd=copy, env=env, check=True,
                   capture_output=True)
    triage = _triage()
    counts: dict[str, Any] = defaultdict(int)
    counts["generated"] = generated
    survivors: list[dict[str, Any]] = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            counts["run"] += 1
            outcome = result.test_outcome.value if result.test_outcome is not None else result.worker_outcome.value
            if outcome == "killed" and (result.output or "").strip() == "timeout":
                outcome = "timed_out"
            counts[outcome] += 1
            if outcome == "survived":
                name = _mutant_key(module, result.diff or "")
                verdict = triage.get(name, "untriaged")
                counts[f"survived_{verdict}"] += 1
                mutation = item.mutations[0]
                survivors.append({"file": module, "line": mutation.start_pos[0], "operator": mutation.operator_name,
                                  "occurrence": mutation.occurrence, "mutant": name, "triage": verdict})
    counts["wall_seconds"] = round(time.monotonic() - started, 1)
    return {"counts": dict(counts), "survivors": sorted(survivors, key=lambda s: (s["file"], s["line"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", default=",".join(FILES), help=f"comma-separated subset of {', '.join(FILES)}")
    parser.add_argument("--killer", choices=("fuzz", "tests"), default="fuzz")
    parser.add_argument("--budget", default="300-runs",
                        help="the fuzz campaign's budget per mutant (default 300-runs)")
    parser.add_argument("--start", type=int, default=1, help="the fuzz campaign's first seed (default 1)")
    parser.add_argument("--sample", type=int, default=20, help="mutants drawn per file (0: all; default 20)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the sample draw (default 1)")
    parser.add_argument("--timeout", type=float, default=1200.0,
                        help="seconds before a mutant counts as timed out, hence killed (default 1200: a budget in runs "
                             "takes longer on a loaded machine)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sidekick-mutation"),
                        help="working directory (a copy of the sources, sessions; default /tmp/sidekick-mutation)")
    parser.add_argument("--resume", action="store_true", help="go on with the sessions found in --work")
    args = parser.parse_args()
    keys = [k.strip() for k in args.files.split(",") if k.strip()]
    unknown = sorted(set(keys) - FILES.keys())
    if unknown:
        parser.error(f"unknown file(s): {', '.join(unknown)} (known: {', '.join(FILES)})")
    if args.sample < 0:
        parser.error("--sample must be 0 or more")
    if shutil.which("cosmic-ray") is None:
        parser.error("cosmic-ray is not installed: pip install -e '.[mutation]'")
    args.work.mkdir(parents=True, exist_ok=True)
    copy = args.work / "src" / PACKAGE
    if not (args.resume and copy.exists()):
        copy = copy_tree(args.work)
    env = killer_env(copy)
    refused = refusal(copy, env, keys)
    if refused:
        print(f"mutation.py: {refused}", file=sys.stderr)
        sys.exit(2)
    per_file = {key: run_file(key, args, args.work, copy, env) for key in keys}
    totals: dict[str, int] = defaultdict(int)
    for result in per_file.values():
        for name, value in result["counts"].items():
            if isinstance(value, int):
                totals[name] += value
    run = totals["run"]
    equivalent = totals["survived_equivalent"]
    killed = totals["killed"] + totals["timed_out"]
    from importlib import metadata  # noqa: PLC0415

    report = {
        "tool": f"cosmic-ray {metadata.version('cosmic-ray')}",
        "killer": args.killer if args.killer == "tests" else f"sidekick fuzz --budget {args.budget} --seed {args.start}",
        "sample": f"{args.sample} per file, drawn with seed {args.seed}" if args.sample else "every mutant",
        "generated": totals["generated"],
        "run": run,
        "killed": totals["killed"],
        "timed_out": totals["timed_out"],
        "survived": totals["survived"],
        "incompetent": totals["incompetent"],
        "survived_by_triage": {k[len("survived_"):]: v for k, v in sorted(totals.items())
                               if k.startswith("survived_")},
        "kill_rate": round(killed / run, 3) if run else None,
        "kill_rate_non_equivalent": round(killed / (run - equivalent), 3) if run - equivalent else None,
        "kill_rate_non_equivalent_with_closed": round((killed + totals["survived_blind-spot-closed"])
                                                      / (run - equivalent), 3) if run - equivalent else None,
        "per_file": {FILES[k]: v["counts"] for k, v in per_file.items()},
        "survivors": [s for v in per_file.values() for s in v["survivors"]],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
