"""Which requirement of docs/PROTOCOL.md the checks exercise, and why the others are not checked.

Generated from the checks themselves (each names its requirement ids): every requirement is
``checked`` (by the checks listed), ``every check`` (observed by the client in every session: it
decodes every frame the server sends with the reference decoder and expects each answer the table
allows), ``not observable`` (with the reason no client can see it), or ``device`` (binds the device
only: the reference handset's own tests hold it, certify tests servers). ``REQUIREMENTS`` copies
the spec's ids and levels; a test keeps it, the reasons and docs/CERTIFY.md in agreement.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sidekick_testbed.emulator.certify.framework import Check

__all__ = ["BEGIN", "DEVICE_ONLY", "END", "EVERY_CHECK", "NOT_OBSERVABLE", "REQUIREMENTS", "Coverage", "coverage",
           "figures", "render_markdown", "render_text"]

REQUIREMENTS: dict[str, str] = dict(item.split(":") for item in """
R-ENC-1:MUST R-ENC-2:MUST R-ENC-3:MUST R-FRAME-1:MUST R-FRAME-2:MUST R-FRAME-3:MUST R-FRAME-4:MUST R-FRAME-5:MUST
R-FRAME-6:MUST R-FRAME-7:MUST R-FRAME-8:MUST R-FRAME-9:MUST R-FRAME-10:MUST R-FRAME-11:SHOULD R-MSG-1:MUST
R-MSG-2:MUST R-MSG-3:MUST R-MSG-4:MUST R-MSG-5:MUST R-REC-1:MUST R-REC-2:MUST R-REC-3:MUST R-REC-4:MUST R-REC-5:MUST
R-STATE-1:MUST R-STATE-2:MUST R-STATE-3:MUST R-STATE-4:MUST R-STATE-5:MUST R-STATE-6:MUST R-STATE-7:MUST
R-STATE-8:SHOULD R-AUTH-1:MUST R-AUTH-2:MUST R-AUTH-3:MUST R-AUTH-4:MUST R-AUTH-5:MUST R-AUTH-6:MUST R-AUTH-7:MUST
R-AUTH-8:SHOULD R-AUTH-9:SHOULD R-VER-1:MUST R-VER-2:MUST R-VER-3:MUST R-VER-4:MUST R-VER-5:MUST R-VER-6:MUST
R-DUR-1:MUST R-DUR-2:MUST R-DUR-3:MUST R-DUR-4:MUST R-DUR-5:MUST R-DUR-6:MUST R-DUR-7:MUST R-DUR-8:MUST R-DUR-9:MUST
R-DUR-10:MUST R-DUR-11:MUST R-DUR-12:MUST R-DUR-13:SHOULD R-IDEM-1:MUST R-IDEM-2:MUST R-IDEM-3:MUST R-IDEM-4:MUST
R-IDEM-5:MUST R-IDEM-6:MAY R-IDEM-7:MUST R-IDEM-8:MUST R-IDEM-9:MUST R-GEN-1:MUST R-GEN-2:MUST R-GEN-3:MUST
R-GEN-4:MUST R-GEN-5:MUST R-GEN-6:MUST R-GEN-7:MUST R-GEN-8:MUST R-GEN-9:MAY R-GEN-10:MUST R-GEN-11:MUST
R-PULL-1:MUST R-PULL-2:MUST R-PULL-3:MUST R-PULL-4:MUST R-PULL-5:MUST R-PULL-6:MUST R-PULL-7:MUST R-PULL-8:MUST
R-PULL-9:MUST R-PULL-10:MUST R-PULL-11:MUST R-PULL-12:MUST R-PULL-13:MAY R-PULL-14:MUST R-CONFLICT-1:MUST
R-CONFLICT-2:MUST R-CONFLICT-3:MUST R-CONFLICT-4:MUST R-CONFLICT-5:MUST R-CONFLICT-6:MUST R-CONFLICT-8:MUST
R-CONFLICT-7:SHOULD R-BLOB-1:MUST R-BLOB-2:MUST R-BLOB-3:MUST R-BLOB-4:MUST R-BLOB-5:MUST R-BLOB-6:MUST
R-BLOB-7:MUST R-BLOB-8:MUST R-BLOB-9:MUST R-BLOB-10:SHOULD R-BLOB-11:MAY R-BLOB-12:MUST R-LIMIT-1:MUST
R-LIMIT-2:MUST R-LIMIT-3:MUST R-LIMIT-4:MUST R-LIMIT-5:MUST R-LIMIT-6:MUST R-LIMIT-7:MAY R-LIMIT-8:MAY R-LIMIT-9:MAY
R-LIMIT-13:MUST R-LIMIT-10:MUST R-LIMIT-11:SHOULD R-LIMIT-12:SHOULD R-ERR-1:MUST R-ERR-2:MUST R-ERR-3:MUST
R-ERR-4:MUST R-ERR-5:MUST R-TCP-1:MUST R-TCP-2:MUST R-TCP-3:MUST R-TCP-4:MUST R-TCP-5:MUST R-TCP-6:MUST
R-HTTP-1:MUST R-HTTP-2:MUST R-HTTP-3:MUST R-HTTP-4:MUST R-HTTP-5:MUST R-HTTP-6:MUST R-HTTP-7:MUST R-HTTP-8:MUST
R-HTTP-9:SHOULD R-HTTP-10:MUST R-HTTP-11:MUST R-HTTP-12:MUST R-HTTP-13:SHOULD R-HTTP-14:MUST R-CONFORM-1:MUST
R-CONFORM-2:MUST R-CONFORM-3:MUST R-CONFORM-4:SHOULD
""".split())
"""Every requirement id of docs/PROTOCOL.md with its level, in the spec's order."""

DEVICE_ONLY: frozenset[str] = frozenset({
    "R-AUTH-2", "R-VER-4", "R-DUR-2", "R-DUR-7", "R-DUR-8", "R-DUR-9", "R-DUR-10", "R-DUR-13", "R-IDEM-3",
    "R-IDEM-4", "R-IDEM-5", "R-IDEM-6", "R-IDEM-9", "R-GEN-4", "R-GEN-5", "R-GEN-6", "R-GEN-7", "R-GEN-8",
    "R-GEN-9", "R-GEN-10", "R-PULL-6", "R-PULL-7", "R-PULL-11", "R-CONFLICT-7", "R-BLOB-7", "R-BLOB-9",
    "R-BLOB-10", "R-LIMIT-12", "R-HTTP-6", "R-HTTP-14", "R-STATE-8", "R-AUTH-8",
})
"""Requirements that bind the device alone (the handset's tests and ``sidekick fuzz`` hold them)."""

EVERY_CHECK: dict[str, str] = {
    "R-ENC-3": "every frame the server sends is decoded by the reference decoder; a value out of its field fails the check",
    "R-REC-2": "every check that pulls finds its records under the ids it pushed",
    "R-STATE-2": "every check expects exactly the answers the table allows; any other message fails it",
    "R-STATE-7": "a server PING over HTTP, or outside READY, fails the check that expected an answer",
    "R-VER-6": "a type, flag, record kind or flag of another version fails the decoder in every check",
    "R-BLOB-4": "the client refuses a frame above the negotiated max_frame, blob chunks included",
    "R-HTTP-5": "over HTTP every check reads each answer from the response to its request",
    "R-HTTP-11": "over HTTP a server PING would be an answer no check expects",
}
"""Requirements the client observes in every session rather than in a check of their own."""

NOT_OBSERVABLE: dict[str, str] = {
    "R-FRAME-9": "takes 2^32 frames in one session",
    "R-MSG-5": "no finite test shows that a behaviour does not depend on a free text",
    "R-DUR-11": "needs a storage failure, which a client cannot cause in a foreign server",
    "R-LIMIT-10": "needs a graceful stop of the server, which no command of the suite asks for",
    "R-AUTH-9": "a SHOULD; observing it locks the suite's own account out (an attempt regained per 12 s)",
    "R-LIMIT-8": "a MAY: a server without budgets conforms",
    "R-PULL-13": "a MAY: discarding superseded versions is invisible until a duplicate is given version 0",
    "R-HTTP-13": "a SHOULD; needs a pull of more than 4 MiB",
    "R-CONFORM-4": "a SHOULD about which bindings a server offers",
    "R-BLOB-11": "a MAY: discarding an incomplete blob only makes the device upload again",
}
"""Server requirements no client can observe (or that a conforming server may leave out), and why."""


@dataclass(frozen=True, slots=True)
class Coverage:
    """One requirement: its level, whom it binds, the checks that exercise it, and the status."""

    requirement: str
    level: str
    binds: str
    checks: tuple[str, ...]
    status: str


def coverage(checks: Iterable[Check]) -> list[Coverage]:
    """Every requirement of the spec, in its order, with the checks that name it."""
    by_requirement: dict[str, list[str]] = {}
    for check in checks:
        for requirement in check.requirements:
            by_requirement.setdefault(requirement, []).append(check.id)
    rows = []
    for requirement, level in REQUIREMENTS.items():
        named = tuple(sorted(by_requirement.get(requirement, ())))
        binds = "device" if requirement in DEVICE_ONLY else "server"
        if named:
            status = "checked"
        elif requirement in EVERY_CHECK:
            status = f"every check: {EVERY_CHECK[requirement]}"
        elif requirement in NOT_OBSERVABLE:
            status = f"not observable: {NOT_OBSERVABLE[requirement]}"
        elif binds == "device":
            status = "device requirement: held by the reference handset's tests, not by certify"
        else:
            status = "NOT CHECKED"
        rows.append(Coverage(requirement, level, binds, named, status))
    return rows


def figures(rows: list[Coverage]) -> dict[str, int]:
    """MUSTs in all, binding servers, observable by a client, covered, not observable."""
    musts = [r for r in rows if r.level == "MUST"]
    server = [r for r in musts if r.binds == "server"]
    hidden = [r for r in server if r.status.startswith("not observable")]
    covered = [r for r in server if r.status == "checked" or r.status.startswith("every check")]
    return {"musts": len(musts), "server_musts": len(server), "observable": len(server) - len(hidden),
            "covered": len(covered), "not_observable": len(hidden), "device_musts": len(musts) - len(server)}


def summary(rows: list[Coverage]) -> str:
    """One paragraph of figures."""
    f = figures(rows)
    return (f"{f['musts']} MUST requirements: {f['device_musts']} bind the device only; of the {f['server_musts']} "
            f"that bind a server, {f['observable']} are observable by a client and {f['covered']} of them are "
            f"covered by a check; {f['not_observable']} cannot be observed (reasons in the table).")


def render_markdown(rows: list[Coverage]) -> str:
    """The table of docs/CERTIFY.md."""
    lines = [summary(rows), "", "| requirement | level | binds | checks | status |", "|---|---|---|---|---|"]
    for row in rows:
        checks = ", ".join(f"`{c}`" for c in row.checks) or "-"
        status = "checked" if row.status == "checked" else row.status
        lines.append(f"| {row.requirement} | {row.level} | {row.binds} | {checks} | {status} |")
    return "\n".join(lines) + "\n"


def render_text(rows: list[Coverage]) -> str:
    """The table for a terminal (``sidekick certify --list``)."""
    lines = [summary(rows), ""]
    for row in rows:
        what = ", ".join(row.checks) if row.checks else row.status
        lines.append(f"{row.requirement:<13} {row.level:<6} {row.binds:<6} {what}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the markdown table, or with a file name, write it between that file's markers."""
    import sys

    from sidekick_testbed.emulator.certify import all_checks

    args = sys.argv[1:] if argv is None else argv
    table = render_markdown(coverage(all_checks().values()))
    if not args:
        sys.stdout.write(table)
        return 0
    path = args[0]
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    begin, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text[:begin] + "\n" + table + text[end:])
    return 0


BEGIN = "<!-- coverage table: generated by emulator.certify.coverage -->"
END = "<!-- end of coverage table -->"

if __name__ == "__main__":
    raise SystemExit(main())
