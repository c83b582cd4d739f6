"""The failed-authentication throttle (docs/PROTOCOL.md R-AUTH-9), sans-I/O.

Two token buckets of failures: one per (account, source address), one per source address over
all accounts. Each failed AUTH takes a token from both; each bucket regains one token per
``refill`` seconds up to its ``burst``. While either bucket of an AUTH is empty, the AUTH is
answered AUTH_FAILED without its MAC being checked, so a guess made then can never succeed, and
the answer is the one a wrong MAC gets (R-AUTH-4). There is deliberately no bucket per account
over all addresses: anyone could then lock any account out by failing on its name, and one client
must never keep another from syncing. Memory is bounded: a bucket that has refilled is forgotten,
and past ``max_entries`` the least recently used ones go first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["AuthThrottle", "Bucket"]


@dataclass(frozen=True, slots=True)
class Bucket:
    """``burst`` failures at once, then one more per ``refill`` seconds."""

    burst: int
    refill: float

    def __post_init__(self) -> None:
        if self.burst < 1 or self.refill <= 0:
            raise ValueError("a bucket needs burst >= 1 and refill > 0")


class AuthThrottle:
    """Failed authentications per (account, address) and per address (see the module docstring)."""

    def __init__(self, per_account: Bucket, per_address: Bucket, *, max_entries: int = 100_000) -> None:
        self.per_account = per_account
        self.per_address = per_address
        self.max_entries = max_entries
        self._spent: OrderedDict[tuple[str, ...], tuple[float, float]] = OrderedDict()  # key -> (spent, at)

    def __len__(self) -> int:
        return len(self._spent)

    def throttled(self, account: str, address: str | None, now: float) -> bool:
        """Whether an AUTH for ``account`` from ``address`` is to be refused unchecked now."""
        if address is None:
            return False
        return (self._level(("a", account, address), self.per_account, now) > self.per_account.burst - 1
                or self._level(("s", address), self.per_address, now) > self.per_address.burst - 1)

    def failed(self, account: str, address: str | None, now: float) -> None:
        """Count one failed AUTH for ``account`` from ``address``."""
        if address is None:
            return
        for key, bucket in ((("a", account, address), self.per_account), (("s", address), self.per_address)):
            spent = self._level(key, bucket, now)
            self._spent[key] = (min(spent + 1, bucket.burst), now)
            self._spent.move_to_end(key)
        while len(self._spent) > self.max_entries:
            self._spent.popitem(last=False)

    def _level(self, key: tuple[str, ...], bucket: Bucket, now: float) -> float:
        """Tokens spent in ``key``'s bucket at ``now`` (0: full; ``burst``: empty)."""
        entry = self._spent.get(key)
        if entry is None:
            return 0.0
        spent, at = entry
        level = max(0.0, spent - (now - at) / bucket.refill)
        if level == 0.0:
            del self._spent[key]
        return level
