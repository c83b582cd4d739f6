"""A NAND flash chip model (``NandFlash``): program/erase rules, ECC, bad blocks, wear and power loss.

Semantics enforced (each with a typed error):

- a program only clears bits (the page becomes ``old AND new``), at most ``nop`` programs per page
  between erases; the first program of the pages of a block goes in page order;
- an erase sets every page of a block to 0xFF;
- a bad block (factory marked, or grown by a program/erase failure or wear-out) refuses both.

Faults come only from the ``random.Random`` passed in and the ``FlashFaults`` switches:
power cut at an operation number (``arm_power_cut``), bit flips on read against a
``ecc_bits_per_512``-bit-per-sector ECC (corrected and counted, or ``UncorrectableError``: never
wrong data), factory and grown bad blocks, wear-out past ``endurance`` erase cycles.

Memory is sparse: only programmed pages are held, each as one immutable ``bytes`` holding the raw
page (``page_size + spare_size``) without its trailing 0xFF bytes (a small page costs its content,
not the whole page; every read pads it back); ``snapshot()`` is a shallow copy of that dict.
The image file format is in ``emulator.flash.image`` (documented in docs/FLASH.md).
"""

from __future__ import annotations

import random
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from sidekick_testbed.emulator.flash.faults import (
    CUT_VARIANTS,
    BadBlockError,
    EraseError,
    FlashFaults,
    NopExceeded,
    PowerLoss,
    ProgramError,
    ProgramOrderError,
    UncorrectableError,
    UsageError,
)
from sidekick_testbed.emulator.flash.geometry import SECTOR, Geometry

__all__ = ["FlashSnapshot", "FlashStats", "NandFlash"]

OpKind = Literal["read", "program", "erase"]
DEFAULT_GEOMETRY = Geometry()
"""A 64 MiB SLC part, the geometry of a chip made without one."""


@dataclass(slots=True)
class FlashStats:
    """Counters of what the chip did."""

    reads: int = 0
    programs: int = 0
    erases: int = 0
    corrected_bits: int = 0
    uncorrectable_reads: int = 0
    program_failures: int = 0
    erase_failures: int = 0
    power_losses: int = 0


@dataclass(frozen=True, slots=True)
class FlashSnapshot:
    """Everything needed to put a chip back into an earlier state (``NandFlash.restore``)."""

    pages: dict[int, bytes]
    """Programmed pages by index, raw (data then spare) with trailing 0xFF bytes stripped."""
    nop_used: dict[int, int]
    next_page: tuple[int, ...]
    erase_counts: tuple[int, ...]
    bad: frozenset[int]
    ops: int
    rng_state: object = field(default=None)


class NandFlash:
    """One NAND chip. Addresses are (block, page); every read, program and erase is one operation.

    ``op_log_len`` is how many of the last operations ``op_log`` keeps (default ``OP_LOG_LEN``;
    0 keeps none, for fleets of many chips where nobody reads the log). ``pack_pages`` keeps a
    held page of at least ``PACK_MIN`` bytes zlib-compressed when that halves it: memory only,
    every operation behaves the same (for fleets whose synthetic photo data compresses).
    """

    OP_LOG_LEN = 256

    def __init__(self, geometry: Geometry = DEFAULT_GEOMETRY, *, rng: random.Random | None = None,
                 faults: FlashFaults | None = None, op_log_len: int = OP_LOG_LEN,
                 pack_pages: bool = False) -> None:
        if op_log_len < 0:
            raise ValueError(f"op_log_len must be >= 0, not {op_log_len}")
        self.geometry = geometry
        self.pack_pages = pack_pages
        self.faults = faults or FlashFaults()
        self.rng = rng or random.Random(0)
        self.stats = FlashStats()
        self.ops = 0
        """Operations attempted so far (reads, programs, erases)."""
        self.op_log: deque[tuple[int, str, int, int]] = deque(maxlen=op_log_len)
        """The last operations: (op number, kind, block, page or -1)."""
        self.op_trace: list[str] | None = None
        """If set to a list, the kind ("read", "program", "erase") of every operation is appended."""
        self._pages: dict[int, bytes] = {}  # raw pages without their trailing 0xFF bytes
        self.changes = 0
        """Bumped by every change of the array's bits or of the bad-block table (not an operation):
        a reader of ``peek`` may keep what it decoded while this stays the same."""
        self._nop: dict[int, int] = {}
        self._next_page = [0] * geometry.blocks
        self._erase_counts = [0] * geometry.blocks
        self._bad: set[int] = set()
        self._failing: set[int] = set()  # grown defects: programs fail until firmware marks them bad
        self._cut_at: int | None = None
        self._cut_variant = "torn"
        self._raw_size = geometry.raw_page
        self._ppb = geometry.pages_per_block
        self._blocks = geometry.blocks
        self._erased_page = b"\xff" * geometry.raw_page
        self._erased_data = b"\xff" * geometry.page_size
        self._erased_spare = b"\xff" * geometry.spare_size
        if self.faults.factory_bad_rate > 0:
            for block in range(geometry.blocks):
                if self.rng.random() < self.faults.factory_bad_rate:
                    self._mark_bad(block)

    @property
    def faults(self) -> FlashFaults:
        """The fault switches in force (may be replaced at any time)."""
        return self._faults

    @faults.setter
    def faults(self, faults: FlashFaults) -> None:
        self._faults = faults
        self._read_fault_rate = faults.read_flip_rate + faults.read_uncorrectable_rate

    # ------------------------------------------------------------------ queries

    def is_bad(self, block: int) -> bool:
        """True if the block is marked bad (the bad-block table; not an operation)."""
        self._check_block(block)
        return block in self._bad

    def bad_blocks(self) -> list[int]:
        """Blocks marked bad, ascending."""
        return sorted(self._bad)

    def erase_count(self, block: int) -> int:
        """Erase cycles this block has seen."""
        self._check_block(block)
        return self._erase_counts[block]

    def is_erased(self, block: int, page: int) -> bool:
        """True if the page holds nothing programmed (a model query, not an operation)."""
        return block * self.geometry.pages_per_block + page not in self._pages

    def programmed_pages(self) -> int:
        """Pages holding programmed bits."""
        return len(self._pages)

    def held_bytes(self) -> int:
        """Bytes of page content held in memory: programmed pages without their trailing 0xFF."""
        return sum(map(len, self._pages.values()))

    def peek(self, block: int, page: int) -> bytes:
        """The page's bits as they are in the array, data then spare (``raw_page`` bytes): what a
        chip programmer dumps, not an operation (no op count, no ECC draw, no power cut, no RNG).
        The model keeps no ECC syndrome: its flips are drawn per read and never stored, so the
        array holds exactly what a read corrects to."""
        raw = self._held(self._index(block, page))
        return self._erased_page if raw is None else raw.ljust(self._raw_size, b"\xff")

    def peek_block(self, block: int) -> list[bytes | None]:
        """``peek`` of every page of a block, None for a page holding no programmed bit (not an operation)."""
        self._check_block(block)
        first = block * self._ppb
        size = self._raw_size
        out: list[bytes | None] = []
        for index in range(first, first + self._ppb):
            raw = self._held(index)
            out.append(None if raw is None else raw.ljust(size, b"\xff"))
        return out

    def held_block(self, block: int) -> list[bytes | None]:
        """Every page of a block as the array holds it: its bits without the trailing 0xFF bytes
        (the same object until the page changes), None for a page with no programmed bit. Not an
        operation, like ``peek``."""
        self._check_block(block)
        first = block * self._ppb
        return [self._held(index) for index in range(first, first + self._ppb)]

    def mark_bad(self, block: int) -> None:
        """Mark a block bad (what firmware does after a failure): spare byte 0 of page 0 := 0x00."""
        self._check_block(block)
        self._mark_bad(block)

    # ------------------------------------------------------------------ faults

    def arm_power_cut(self, at_op: int, variant: str = "torn") -> None:
        """Cut the power during operation number ``at_op`` (1-based, counted by ``ops``).

        ``clean``: the operation does nothing. ``torn``: a program leaves a random subset of its
        bits programmed; an erase leaves the block partly erased. Either way ``PowerLoss`` is raised
        and the cut is disarmed: the chip then accepts a reboot (a fresh mount by its user).
        """
        if variant not in CUT_VARIANTS:
            raise ValueError(f"unknown power-cut variant {variant!r}; expected one of {CUT_VARIANTS}")
        if at_op <= self.ops:
            raise ValueError(f"operation {at_op} is already past (ops = {self.ops})")
        self._cut_at = at_op
        self._cut_variant = variant

    def disarm_power_cut(self) -> None:
        """Cancel an armed power cut."""
        self._cut_at = None

    @property
    def armed(self) -> bool:
        """True while a power cut is pending."""
        return self._cut_at is not None

    # ------------------------------------------------------------------ operations

    def read_page(self, block: int, page: int) -> tuple[bytes, bytes]:
        """Read (data, spare). Flips within the ECC limit are corrected; beyond it UncorrectableError."""
        index = self._index(block, page)
        if self._tick("read", block, page):
            self._cut("read", block, page)
        self.stats.reads += 1
        raw = self._held(index)
        faults = self.faults
        if faults.read_flip_rate or faults.read_uncorrectable_rate:
            self._read_faults(block, page)
        if raw is None:
            return self._erased_data, self._erased_spare
        size = self.geometry.page_size
        if len(raw) <= size:
            return raw.ljust(size, b"\xff"), self._erased_spare
        return raw[:size], raw[size:].ljust(self.geometry.spare_size, b"\xff")

    def read_raw(self, block: int, page: int) -> bytes:
        """Read data and spare as one ``bytes`` (same rules as ``read_page``)."""
        ppb = self._ppb
        if not (0 <= block < self._blocks and 0 <= page < ppb):
            raise UsageError(f"address {block}:{page} out of range")
        ops = self.ops = self.ops + 1
        self.op_log.append((ops, "read", block, page))
        if self.op_trace is not None:
            self.op_trace.append("read")
        if ops == self._cut_at:
            self._cut("read", block, page)
        self.stats.reads += 1
        if self._read_fault_rate:
            self._read_faults(block, page)
        raw = self._held(block * ppb + page)
        if raw is None:
            return self._erased_page
        return raw.ljust(self._raw_size, b"\xff")

    def read_run(self, block: int, first: int = 0) -> list[bytes]:
        """Sequential read: pages ``first``, ``first + 1``, ... up to and including the first erased
        page of the block (one operation each, as ``read_raw``); the programmed pages, in order."""
        ppb = self._ppb
        if not (0 <= block < self._blocks and 0 <= first < ppb):
            raise UsageError(f"address {block}:{first} out of range")
        pages = self._pages
        base = block * ppb
        out: list[bytes] = []
        log = self.op_log
        trace = self.op_trace
        faults = self._read_fault_rate
        size = self._raw_size
        stats = self.stats
        cut_at = self._cut_at
        ops = self.ops
        for page in range(first, ppb):
            ops = self.ops = ops + 1
            log.append((ops, "read", block, page))
            if trace is not None:
                trace.append("read")
            if ops == cut_at:
                self._cut("read", block, page)
            stats.reads += 1
            if faults:
                self._read_faults(block, page)
            raw = pages.get(base + page)
            if raw is None:
                break
            if type(raw) is _Packed:
                raw = _unpack(raw)
            out.append(raw.ljust(size, b"\xff"))
        return out

    def program_page(self, block: int, page: int, data: bytes, spare: bytes = b"") -> None:
        """Program a page: bits go 1 -> 0 only (old AND new). Short data/spare is padded with 0xFF."""
        geometry = self.geometry
        index = self._index(block, page)
        if len(data) > geometry.page_size or len(spare) > geometry.spare_size:
            raise UsageError(f"program of {len(data)}+{len(spare)} bytes into a "
                             f"{geometry.page_size}+{geometry.spare_size} page")
        if block in self._bad:
            raise BadBlockError(f"program of bad block {block}")
        used = self._nop.get(index, 0)
        if used >= geometry.nop:
            raise NopExceeded(f"page {block}:{page} programmed {used} times since erase (NOP {geometry.nop})")
        if used == 0 and page < self._next_page[block]:
            raise ProgramOrderError(f"first program of page {block}:{page} after page "
                                    f"{self._next_page[block] - 1} of the same block")
        # Pages are held without trailing 0xFF: an AND of two such is one too (0xFF AND x = x).
        spare = bytes(spare).rstrip(b"\xff")
        if spare:
            new = bytes(data).ljust(geometry.page_size, b"\xff") + spare
        else:
            new = bytes(data).rstrip(b"\xff")
        old = self._held(index)
        if old is not None:
            new = _and_stripped(old, new)
        if self._tick("program", block, page):
            if self._cut_variant == "torn":
                self._store_page(index, block, page, used, self._torn_program(old, new))
            self._cut("program", block, page)
        self.stats.programs += 1
        if block in self._failing or (
                self.faults.program_fail_rate and self.rng.random() < self.faults.program_fail_rate):
            # A grown defect. The chip reports it; marking the block bad is the firmware's job
            # (mark_bad), done once its data is safe elsewhere: the other pages stay readable.
            self.stats.program_failures += 1
            self._store_page(index, block, page, used, self._torn_program(old, new))
            self._failing.add(block)
            raise ProgramError(f"program failure on {block}:{page}; block {block} has gone bad")
        self._store_page(index, block, page, used, new)

    def erase_block(self, block: int) -> None:
        """Erase a block: every page back to 0xFF, one more erase cycle."""
        self._check_block(block)
        if block in self._bad:
            raise BadBlockError(f"erase of bad block {block}")
        if self._tick("erase", block, -1):
            if self._cut_variant == "torn":
                self._torn_erase(block)
            self._cut("erase", block, -1)
        self.stats.erases += 1
        faults = self.faults
        worn = faults.wear_out and self._erase_counts[block] >= self.geometry.endurance
        if (worn and self.rng.random() < faults.wear_fail_rate) or (
                faults.erase_fail_rate and self.rng.random() < faults.erase_fail_rate):
            self.stats.erase_failures += 1
            self._erase_counts[block] += 1
            self._mark_bad(block)
            raise EraseError(f"erase failure on block {block}{' (worn out)' if worn else ''}; now bad")
        self._erase(block)

    # ------------------------------------------------------------------ snapshot

    def snapshot(self) -> FlashSnapshot:
        """A cheap copy of the chip's state (pages are shared immutable bytes)."""
        return FlashSnapshot(dict(self._pages), dict(self._nop), tuple(self._next_page),
                             tuple(self._erase_counts), frozenset(self._bad), self.ops,
                             self.rng.getstate())

    def restore(self, snap: FlashSnapshot) -> None:
        """Put the chip back into the snapshot's state (power cut disarmed)."""
        self._pages = dict(snap.pages)
        self._nop = dict(snap.nop_used)
        self._next_page = list(snap.next_page)
        self._erase_counts = list(snap.erase_counts)
        self._bad = set(snap.bad)
        self.ops = snap.ops
        self.changes += 1
        if snap.rng_state is not None:
            self.rng.setstate(snap.rng_state)  # type: ignore[arg-type]
        self._cut_at = None

    # ------------------------------------------------------------------ internals

    def _check_block(self, block: int) -> None:
        if not 0 <= block < self.geometry.blocks:
            raise UsageError(f"block {block} out of range 0..{self.geometry.blocks - 1}")

    def _index(self, block: int, page: int) -> int:
        geometry = self.geometry
        if not (0 <= block < geometry.blocks and 0 <= page < geometry.pages_per_block):
            raise UsageError(f"address {block}:{page} out of range")
        return block * geometry.pages_per_block + page

    def _tick(self, kind: str, block: int, page: int) -> bool:
        """Count one operation; True if the power cut falls on it."""
        self.ops += 1
        self.op_log.append((self.ops, kind, block, page))
        if self.op_trace is not None:
            self.op_trace.append(kind)
        return self.ops == self._cut_at

    def _cut(self, kind: str, block: int, page: int) -> None:
        variant = self._cut_variant if kind != "read" else "clean"
        self._cut_at = None
        self.stats.power_losses += 1
        raise PowerLoss(self.ops, kind, variant)

    def _held(self, index: int) -> bytes | None:
        """The page at ``index`` as held (stripped of trailing 0xFF, unpacked), or None if erased."""
        raw = self._pages.get(index)
        if raw is not None and type(raw) is _Packed:
            return _unpack(raw)
        return raw

    def _store_page(self, index: int, block: int, page: int, used: int, raw: bytes) -> None:
        """Record a program of ``raw`` (stripped of trailing 0xFF) at ``index``."""
        if not raw and index not in self._pages:
            self._nop[index] = used + 1  # nothing visible, but a partial program was spent
        else:
            if self.pack_pages and len(raw) >= PACK_MIN:
                packed = _pack(raw)
                if 2 * len(packed) <= len(raw):
                    raw = _Packed(packed)
            self._pages[index] = raw
            self._nop[index] = used + 1
            self.changes += 1
        if page >= self._next_page[block]:
            self._next_page[block] = page + 1

    def _torn_program(self, old: bytes | None, new: bytes) -> bytes:
        """What an interrupted program leaves: either the page programmed up to a random byte
        (the rest untouched), or a random subset of the bits it would clear, cleared.
        ``old``, ``new`` and the result are stripped pages; the draws are over the whole page."""
        n = self._raw_size
        base = old.ljust(n, b"\xff") if old is not None else self._erased_page
        new = new.ljust(n, b"\xff")
        if self.rng.random() < 0.5:
            cut = self.rng.randrange(n)
            return (new[:cut] + base[cut:]).rstrip(b"\xff")
        base_int = int.from_bytes(base, "big")
        to_clear = base_int & ~int.from_bytes(new, "big")
        keep = to_clear & self.rng.getrandbits(n * 8)
        return (base_int & ~keep).to_bytes(n, "big").rstrip(b"\xff")

    def _torn_erase(self, block: int) -> None:
        """Leave a block partly erased: each page erased, untouched, or with some bits set."""
        ppb = self.geometry.pages_per_block
        first = block * ppb
        for index in range(first, first + ppb):
            raw = self._held(index)
            if raw is None:
                continue
            roll = self.rng.random()
            if roll < 1 / 3:
                del self._pages[index]
            elif roll < 2 / 3:
                n = self._raw_size
                bits = int.from_bytes(raw.ljust(n, b"\xff"), "big") | self.rng.getrandbits(n * 8)
                self._pages[index] = bits.to_bytes(n, "big").rstrip(b"\xff")
        self._erase_counts[block] += 1
        self.changes += 1
        self._reset_block_state(block)

    def _erase(self, block: int) -> None:
        ppb = self.geometry.pages_per_block
        first = block * ppb
        pages = self._pages
        for index in range(first, first + ppb):
            pages.pop(index, None)
        self._erase_counts[block] += 1
        self.changes += 1
        self._reset_block_state(block)

    def _reset_block_state(self, block: int) -> None:
        ppb = self.geometry.pages_per_block
        first = block * ppb
        nop = self._nop
        highest = -1
        for index in range(first, first + ppb):
            if index in self._pages:
                nop[index] = 1
                highest = index - first
            else:
                nop.pop(index, None)
        self._next_page[block] = highest + 1

    def _mark_bad(self, block: int) -> None:
        self._bad.add(block)
        index = block * self.geometry.pages_per_block
        raw = (self._held(index) or b"").ljust(self._raw_size, b"\xff")
        size = self.geometry.page_size
        self._pages[index] = (raw[:size] + b"\x00" + raw[size + 1:]).rstrip(b"\xff")
        self.changes += 1

    def _read_faults(self, block: int, page: int) -> None:
        """Draw bit flips for each sector of a read: corrected within the ECC limit, else an error."""
        faults = self.faults
        rng = self.rng
        limit = self.geometry.ecc_bits_per_512
        for _sector in range(self.geometry.page_size // SECTOR):
            roll = rng.random()
            if roll < faults.read_uncorrectable_rate:
                self.stats.uncorrectable_reads += 1
                raise UncorrectableError(f"uncorrectable read of {block}:{page}: "
                                         f"{limit + 1} flipped bits in one sector (ECC corrects {limit})")
            if roll < faults.read_uncorrectable_rate + faults.read_flip_rate and limit:
                self.stats.corrected_bits += rng.randint(1, limit)


PACK_MIN = 1024
"""With ``pack_pages``, a held page of at least this many bytes is kept zlib-compressed if that halves it."""


class _Packed(bytes):
    """A held page, zlib-compressed (``pack_pages``)."""

    __slots__ = ()


_PACK_WBITS = -14
"""Raw deflate (no header, no Adler-32: the bytes never leave memory), a 16 KiB window (more than a
page) and a small hash (``memLevel`` 2): a quarter fewer instructions a page than ``zlib.compress``
with its defaults, whose set-up (a 64 KiB hash table cleared on every call) dominates for 2 KiB."""


def _pack(raw: bytes) -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, _PACK_WBITS, 2)
    return packer.compress(raw) + packer.flush()


def _unpack(packed: bytes) -> bytes:
    return zlib.decompress(packed, _PACK_WBITS)


def _and_stripped(a: bytes, b: bytes) -> bytes:
    """``a AND b`` of two pages held without trailing 0xFF (the shorter one is 0xFF beyond its end);
    the result again ends in a byte other than 0xFF, or is empty."""
    if len(a) < len(b):
        a, b = b, a
    n = len(b)
    if not n:
        return a
    head = (int.from_bytes(a[:n], "big") & int.from_bytes(b, "big")).to_bytes(n, "big")
    return head + a[n:] if len(a) > n else head
