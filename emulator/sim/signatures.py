"""What each planted bug breaks: the violations (``Violation.what``) that show it.

A run of a mutant can also break an invariant for a reason of its own (a real bug of the correct
system); the mutant tests and the benchmark count a mutant as caught only by its signature.
"""

from __future__ import annotations

__all__ = ["MUTANT_SIGNATURES"]

MUTANT_SIGNATURES: dict[str, frozenset[str]] = {
    "mark-clean-on-push-ack": frozenset({"marked-clean"}),
    "restore-from-server-on-reboot": frozenset({"discarded", "blob-discarded", "mount-failed"}),
    "delete-local-missing-on-server": frozenset({"discarded"}),
    "pull-ack-before-flash": frozenset({"pull-ack-before-flash"}),
    "gc-erase-before-commit": frozenset({"store-unreadable", "discarded", "blob-discarded", "mount-failed",
                                         "device-store", "diverged", "blob-missing"}),
    "skip-crc-check": frozenset({"mount-failed", "store-unreadable", "device-store", "discarded"}),
    "ignore-generation-change": frozenset({"diverged", "missing-on-server"}),
    "keep-anchor-after-restore": frozenset({"diverged"}),
    "next-lsn-in-ram": frozenset({"lsn-reuse"}),
    "refuse-pulls-as-full": frozenset({"false-full"}),
    "ack-before-durable": frozenset({"lost"}),
    "silent-rollback": frozenset({"lost"}),
    "duplicate-on-retransmit": frozenset({"applied-twice"}),
    "ignore-pull-ack": frozenset({"anchor-without-pull-ack"}),
    "lose-tail-on-crash": frozenset({"lost"}),
    "wrong-watermark": frozenset({"overclaimed-watermark"}),
    "reorder-versions": frozenset({"diverged"}),
    "forget-conflict-copy": frozenset({"missing-on-server"}),
    "durable-despite-storage-error": frozenset({"durable-after-failed-commit", "lost"}),
}
