"""Room for connections and sessions that have not authenticated yet, bounded apart from the rest.

Every raw connection before its HELLO_OK, every HTTP connection that has not yet carried a request
of an authenticated session, and every HTTP session before its HELLO_OK holds one place here. The
places are bounded in total and per client address; when a bound is reached, the newcomer takes
the place of the one that has waited longest since it last made progress (a frame, a request):
first among the newcomer's own address when that address is at its bound, else among the address
that holds the most places. So a thousand stalled or flooding connections from one address cost
that address its own places and nobody else's, and a handshake that is moving is the last to go
(docs/SERVER.md, docs/PROTOCOL.md R-TCP-6). Authenticated sessions never hold a place: they are
bounded by ``Limits.max_sessions`` alone.

Sans-I/O: the caller passes the time and gets told, through each holder's ``on_evict``, which
holders lost their place.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

__all__ = ["Admission", "Holder"]


class Holder:
    """One place: its address, when it last made progress, what to do when it loses the place."""

    __slots__ = ("address", "since", "on_evict", "evicted", "released")

    def __init__(self, address: str | None, since: float, on_evict: Callable[[], None]) -> None:
        self.address = address
        self.since = since
        self.on_evict = on_evict
        self.evicted = False
        self.released = False

    @property
    def holding(self) -> bool:
        """Whether this holder still has its place."""
        return not (self.evicted or self.released)


class Admission:
    """The places of unauthenticated connections and sessions (see the module docstring).

    ``address`` None (an in-process stream without a peer address) counts against ``total`` only.
    """

    def __init__(self, total: int, per_address: int) -> None:
        if total < 1 or per_address < 1:
            raise ValueError("the bounds must be at least 1")
        self.total = total
        self.per_address = per_address
        self.evictions = 0
        self._by_address: dict[str | None, OrderedDict[Holder, None]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def held_by(self, address: str | None) -> int:
        """Places held by ``address``."""
        holders = self._by_address.get(address)
        return len(holders) if holders else 0

    def admit(self, address: str | None, now: float, on_evict: Callable[[], None]) -> Holder:
        """A place for a newcomer from ``address``; evicts an older holder if a bound is reached."""
        own = self._by_address.get(address)
        if address is not None and own is not None and len(own) >= self.per_address:
            self._evict(own)
        elif self._count >= self.total:
            self._evict(self._greediest())
        holder = Holder(address, now, on_evict)
        self._by_address.setdefault(address, OrderedDict())[holder] = None
        self._count += 1
        return holder

    def progress(self, holder: Holder, now: float) -> None:
        """``holder`` made progress: it is the last of its address to be evicted."""
        if not holder.holding:
            return
        holder.since = now
        self._by_address[holder.address].move_to_end(holder)

    def release(self, holder: Holder) -> None:
        """``holder`` authenticated or went away: its place is free (a second call does nothing)."""
        if not holder.holding:
            return
        holder.released = True
        self._remove(holder)

    def _remove(self, holder: Holder) -> None:
        holders = self._by_address[holder.address]
        del holders[holder]
        if not holders:
            del self._by_address[holder.address]
        self._count -= 1

    def _greediest(self) -> OrderedDict[Holder, None]:
        """The holders of the address with the most places (ties: the one waiting longest)."""
        return max(self._by_address.values(), key=lambda h: (len(h), -next(iter(h)).since))

    def _evict(self, holders: OrderedDict[Holder, None]) -> None:
        victim = next(iter(holders))  # the longest without progress
        victim.evicted = True
        self._remove(victim)
        self.evictions += 1
        victim.on_evict()
