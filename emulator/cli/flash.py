"""``sidekick flash``: format, inspect and check flash images; run the power-loss campaign."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sidekick_testbed.emulator.cli.common import CliError
from sidekick_testbed.emulator.flash import (
    FlashError,
    Geometry,
    ImageError,
    NandFlash,
    load_image,
    save_image,
)
from sidekick_testbed.emulator.store import RecordStore, StoreCorrupt, StoreError, SyncState
from sidekick_testbed.emulator.store.format import HEADER, parse_header

DEFAULT_GEOMETRY = Geometry()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``flash`` and its subcommands."""
    parser = subparsers.add_parser("flash", help="flash images and the record store on them",
                                   description="Format, inspect and check flash images; power-loss runs.")
    sub = parser.add_subparsers(dest="flash_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: _usage(parser))

    p = sub.add_parser("format", help="create a flash image holding an empty store")
    p.add_argument("image", type=Path, help="image file to create")
    p.add_argument("--blocks", type=int, default=DEFAULT_GEOMETRY.blocks, help="erase blocks (default 512 = 64 MiB)")
    p.add_argument("--page-size", type=int, default=DEFAULT_GEOMETRY.page_size, help="data bytes per page")
    p.add_argument("--spare-size", type=int, default=DEFAULT_GEOMETRY.spare_size, help="spare bytes per page")
    p.add_argument("--pages-per-block", type=int, default=DEFAULT_GEOMETRY.pages_per_block)
    p.add_argument("--device-id", help="device id, hex (default: drawn from --seed)")
    p.add_argument("--account", default="", help="account name")
    p.add_argument("--key", default="", help="device key, hex")
    p.add_argument("--bad-blocks", type=float, default=0.0, metavar="RATE",
                   help="fraction of factory bad blocks to mark (e.g. 0.02)")
    p.add_argument("--seed", type=int, default=0, help="seed of the chip's RNG and default device id")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_format)

    p = sub.add_parser("inspect", help="show geometry, block map, records by kind and state, what is at risk")
    p.add_argument("image", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--limit", type=int, default=20, help="at-risk versions listed (default 20)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("fsck", help="check a store image: exit 0 if clean, 1 with findings")
    p.add_argument("image", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_fsck)

    p = sub.add_parser("powerloss", aliases=["power-loss"],
                       help="cut power at flash operations of store workloads; check recovery")
    p.add_argument("--workloads", type=int, default=4, help="workloads (seeds SEED..SEED+N-1)")
    p.add_argument("--ops", type=int, default=200, help="store operations per workload")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--exhaustive", action="store_true", help="every flash operation, every variant")
    mode.add_argument("--samples", type=int, default=200, help="random cuts per workload (default 200)")
    p.add_argument("--seed", type=int, default=0, help="first workload seed")
    p.add_argument("--id", dest="cut_id", metavar="SEED:K:VARIANT", help="rerun one cut alone")
    p.add_argument("--recovery-every", type=int, default=4, metavar="N",
                   help="remount and second-cut checks on every N-th cut (1 = all)")
    p.add_argument("--blocks", type=int, default=8, help="blocks of the runner's chip (16 pages of 512 B each)")
    p.add_argument("--json", action="store_true", help="print only the JSON summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_powerloss)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _hex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise CliError(f"{what} must be hex, not {text!r}") from None


def _load(path: Path) -> NandFlash:
    if not path.exists():
        raise CliError(f"{path}: no such file")
    try:
        return load_image(path)
    except ImageError as exc:
        raise CliError(str(exc)) from None


def _mount(flash: NandFlash, path: Path) -> RecordStore:
    try:
        return RecordStore.mount(flash)
    except StoreError as exc:
        raise CliError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------- format


def cmd_format(args: argparse.Namespace) -> int:
    """Create an image with an empty store."""
    path: Path = args.image
    if path.exists() and not args.force:
        raise CliError(f"{path} exists; use --force to overwrite it")
    if not 0 <= args.bad_blocks < 0.5:
        raise CliError("--bad-blocks must be a fraction in 0..0.5")
    try:
        geometry = Geometry(page_size=args.page_size, spare_size=args.spare_size,
                            pages_per_block=args.pages_per_block, blocks=args.blocks)
    except ValueError as exc:
        raise CliError(f"bad geometry: {exc}") from None
    rng = random.Random(args.seed)
    device_id = _hex(args.device_id, "--device-id") if args.device_id else rng.randbytes(16)
    if not 1 <= len(device_id) <= 255:
        raise CliError("--device-id must be 1..255 bytes")
    from sidekick_testbed.emulator.flash import FlashFaults

    flash = NandFlash(geometry, rng=rng, faults=FlashFaults(factory_bad_rate=args.bad_blocks))
    try:
        store = RecordStore.format(flash, device_id=device_id, account=args.account,
                                   key=_hex(args.key, "--key"))
        save_image(flash, path)
    except (StoreError, FlashError) as exc:
        raise CliError(f"format failed: {exc}") from None
    except OSError as exc:
        raise CliError(f"{path}: cannot write: {exc.strerror or exc}") from None
    stats = store.stats()
    print(f"formatted {path}: {geometry.blocks} blocks x {geometry.pages_per_block} pages x "
          f"{geometry.page_size}+{geometry.spare_size} B ({geometry.capacity // (1 << 20)} MiB), "
          f"{stats.bad_blocks} bad, device {device_id.hex()}, free {stats.free_bytes // 1024} KiB")
    return 0


# ---------------------------------------------------------------------- inspect


def describe(flash: NandFlash, store: RecordStore, limit: int = 20) -> dict[str, Any]:
    """Everything ``inspect`` shows, as a JSON-able dict."""
    g = flash.geometry
    stats = store.stats()
    counts = [flash.erase_count(b) for b in range(g.blocks)]
    kinds: dict[str, Counter[str]] = {}
    gen = store.meta.generation
    at_risk = store.at_risk()
    for version in store.records():
        c = kinds.setdefault(version.record.kind.name.lower(), Counter())
        c["total"] += 1
        if version.record.deleted:
            c["tombstones"] += 1
        durable = version.state is SyncState.DURABLE and version.generation == gen
        c["durable" if durable else version.state.name.lower() if version.state is not SyncState.DURABLE
          else "durable_old_generation"] += 1
    meta = store.meta
    blocks = store.block_map()
    return {
        "geometry": {"page_size": g.page_size, "spare_size": g.spare_size,
                     "pages_per_block": g.pages_per_block, "blocks": g.blocks,
                     "capacity_bytes": g.capacity, "nop": g.nop, "endurance": g.endurance},
        "blocks": {"bad": len(blocks["bad"]), "free": len(blocks["free"]), "used": len(blocks["used"]),
                   "active": len(blocks["active"]), "bad_list": blocks["bad"],
                   "erase_count": {"min": min(counts), "max": max(counts),
                                   "mean": round(sum(counts) / len(counts), 2)}},
        "mounted_from_checkpoint": store.mounted_from_checkpoint,
        "flash_ops": flash.ops,
        "programmed_pages": flash.programmed_pages(),
        "free_bytes": stats.free_bytes,
        "meta": {"device_id": meta.device_id.hex(), "account": meta.account, "next_lsn": meta.next_lsn,
                 "server_id": meta.server_id.hex(), "generation": meta.generation,
                 "durable_lsn": meta.durable_lsn, "anchor": meta.anchor},
        "records": {kind: dict(sorted(c.items())) for kind, c in sorted(kinds.items())},
        "blobs": {"count": stats.blobs, "pages": stats.blob_pages},
        "at_risk": {
            "count": len(at_risk),
            "versions": [{"record_id": v.record.record_id.hex(), "kind": v.record.kind.name.lower(),
                          "lsn": v.lsn, "state": v.state.name.lower(), "deleted": v.record.deleted}
                         for v in at_risk[:max(0, limit)]],
        },
    }


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the image's geometry, block map, records and what is at risk."""
    flash = _load(args.image)
    info = describe(flash, _mount(flash, args.image), args.limit)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    g, b, m = info["geometry"], info["blocks"], info["meta"]
    print(f"image     {args.image}")
    print(f"geometry  {g['blocks']} blocks x {g['pages_per_block']} pages x {g['page_size']}+{g['spare_size']} B "
          f"({g['capacity_bytes'] // (1 << 20)} MiB), NOP {g['nop']}, endurance {g['endurance']}")
    ec = b["erase_count"]
    print(f"blocks    {b['used']} used, {b['active']} active, {b['free']} free, {b['bad']} bad; "
          f"erase count min {ec['min']} mean {ec['mean']} max {ec['max']}")
    print(f"free      {info['free_bytes'] // 1024} KiB")
    print(f"device    {m['device_id']} account {m['account']!r} next LSN {m['next_lsn']}")
    print(f"server    {m['server_id'] or '-'} generation {m['generation']:#x} durable LSN {m['durable_lsn']} "
          f"anchor {m['anchor']}")
    if not info["records"]:
        print("records   none")
    for kind, c in info["records"].items():
        print(f"records   {kind:8} " + ", ".join(f"{n} {name}" for name, n in c.items()))
    print(f"blobs     {info['blobs']['count']} ({info['blobs']['pages']} pages)")
    risk = info["at_risk"]
    print(f"at risk   {risk['count']} version(s) not durable in generation {m['generation']:#x}")
    for v in risk["versions"]:
        print(f"          {v['kind']:8} {v['record_id']} LSN {v['lsn']} {v['state']}"
              f"{' (delete)' if v['deleted'] else ''}")
    return 0


# ---------------------------------------------------------------------- fsck


def check(flash: NandFlash) -> tuple[list[str], list[str]]:
    """(findings, notes) for a flash image holding a store."""
    findings: list[str] = []
    notes: list[str] = []
    try:
        store = RecordStore.mount(flash)
    except StoreCorrupt as exc:
        return [f"not mountable: {exc}"], notes
    g = flash.geometry
    invalid = 0
    for block in range(g.blocks):
        if flash.is_bad(block):
            continue
        for page in range(g.pages_per_block):
            if flash.is_erased(block, page):
                continue
            try:
                raw = flash.read_raw(block, page)
            except FlashError as exc:
                findings.append(f"page {block}:{page} unreadable: {exc}")
                continue
            if raw[:HEADER.size] != b"\xff" * HEADER.size and parse_header(raw) is None:
                invalid += 1
    if invalid:
        notes.append(f"{invalid} torn or invalid page(s), ignored (left by power loss; reclaimed by GC)")
    meta = store.meta
    for rid in store.record_ids():
        try:
            version = store.get(rid)
        except StoreError as exc:
            findings.append(f"record {rid.hex()}: {exc}")
            continue
        assert version is not None
        if version.lsn >= meta.next_lsn:
            findings.append(f"record {rid.hex()}: LSN {version.lsn} >= next LSN {meta.next_lsn}")
        if version.state is not SyncState.DURABLE and version.generation != 0:
            findings.append(f"record {rid.hex()}: {version.state.name} with generation {version.generation:#x}")
        body = version.record.body
        blob_id = getattr(body, "blob_id", None)
        if blob_id is not None and not version.record.deleted and version.lsn and not store.has_blob(blob_id):
            findings.append(f"photo {rid.hex()}: its blob {blob_id.hex()} is missing")
    for bid in store.blob_ids():
        try:
            store.read_blob(bid)
        except StoreError as exc:
            findings.append(f"blob {bid.hex()}: {exc}")
    return findings, notes


def cmd_fsck(args: argparse.Namespace) -> int:
    """Check an image; exit 1 if anything is wrong."""
    flash = _load(args.image)
    findings, notes = check(flash)
    if args.json:
        print(json.dumps({"image": str(args.image), "clean": not findings, "findings": findings,
                          "notes": notes}, indent=2))
    else:
        for line in findings:
            print(f"finding: {line}")
        for line in notes:
            print(f"note: {line}")
        print(f"{args.image}: {'clean' if not findings else f'{len(findings)} finding(s)'}")
    return 1 if findings else 0


# ---------------------------------------------------------------------- powerloss


def cmd_powerloss(args: argparse.Namespace) -> int:
    """Run the power-loss campaign; JSON summary; exit 1 on any failed cut."""
    from sidekick_testbed.emulator.store.powerloss import PowerLossRunner, parse_cut_id

    if args.ops < 1 or args.workloads < 1 or args.samples < 1 or args.recovery_every < 1:
        raise CliError("--ops, --workloads, --samples and --recovery-every must be >= 1")
    try:
        geometry = Geometry(page_size=512, spare_size=16, pages_per_block=16, blocks=args.blocks)
    except ValueError as exc:
        raise CliError(f"bad --blocks: {exc}") from None
    runner = PowerLossRunner(geometry=geometry, n_ops=args.ops, recovery_every=args.recovery_every)
    if args.cut_id:
        try:
            parse_cut_id(args.cut_id)
            result = runner.run_id(args.cut_id)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        out = {"id": result.cut_id, "kind": result.kind, "outcome": result.outcome, "ok": result.ok,
               "problems": list(result.problems)}
        print(json.dumps(out, indent=2) if args.json else
              f"{result.cut_id}: {result.kind} cut, {'ok' if result.ok else 'FAILED'} ({result.outcome})"
              + "".join(f"\n  {p}" for p in result.problems))
        return 0 if result.ok else 1
    seeds = range(args.seed, args.seed + args.workloads)
    from tqdm import tqdm  # type: ignore[import-untyped]

    kinds: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    total = 0
    started = time.perf_counter()
    cut_seconds = 0.0
    bar = tqdm(total=0, desc="power cuts", unit="cut", file=sys.stderr, disable=args.no_progress, leave=False)
    for seed in seeds:
        cuts = list(runner.cuts(seed))
        if not args.exhaustive and len(cuts) > args.samples:
            cuts = random.Random(f"samples/{seed}").sample(cuts, args.samples)
        bar.total += len(cuts)
        bar.refresh()
        cut_started = time.perf_counter()
        for k, variant in cuts:
            result = runner.run_cut(seed, k, variant)
            kinds[f"{variant}-{result.kind}"] += 1
            outcomes[result.outcome] += 1
            if not result.ok:
                failures.append({"id": result.cut_id, "problems": list(result.problems)})
            bar.update(1)
        cut_seconds += time.perf_counter() - cut_started
        total += len(cuts)
        runner.forget(seed)
    bar.close()
    elapsed = cut_seconds
    summary = {
        "workloads": len(seeds), "ops_per_workload": args.ops, "seeds": [seeds.start, seeds.stop - 1],
        "mode": "exhaustive" if args.exhaustive else f"sampled {args.samples}/workload",
        "cuts": total, "by_variant": dict(sorted(kinds.items())), "outcomes": dict(sorted(outcomes.items())),
        "failed": len(failures), "failures": failures[:50],
        "cuts_per_second": round(total / elapsed, 1) if elapsed > 0 else None,
        "seconds": round(time.perf_counter() - started, 2),
        "rerun": f"sidekick flash powerloss --ops {args.ops} --blocks {args.blocks} --id SEED:K:VARIANT",
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['cuts']} cuts over {len(seeds)} workload(s) of {args.ops} ops: "
              f"{len(failures)} failed; {summary['cuts_per_second']} cuts/s")
        print(json.dumps(summary, indent=2))
    return 1 if failures else 0
