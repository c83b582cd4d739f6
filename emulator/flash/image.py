"""The flash image file: a sparse, checksummed dump of a ``NandFlash`` (layout in docs/FLASH.md).

``save_image(flash, path)`` writes one, ``load_image(path)`` makes a ``NandFlash`` from one.

Layout (all integers big-endian):

    header (60 bytes): magic b"SKNAND\\r\\n", version u16 = 1, flags u16 = 0,
        page_size u32, spare_size u32, pages_per_block u32, blocks u32, nop u32, endurance u32,
        ecc_bits_per_512 u32, ops u64, body_len u32, body_crc32 u32, header_crc32 u32
    body: zlib stream of
        erase counts: blocks x u32
        bad blocks:   count u32, then block u32 each
        pages:        count u32, then per programmed page: index u32, nop u8, page_size+spare_size bytes

A file that is not an image, of another version, truncated or corrupt raises ``ImageError``.
"""

from __future__ import annotations

import random
import struct
import zlib
from os import PathLike

from sidekick_testbed.emulator.flash.chip import NandFlash
from sidekick_testbed.emulator.flash.faults import FlashFaults
from sidekick_testbed.emulator.flash.geometry import Geometry

__all__ = ["IMAGE_MAGIC", "IMAGE_VERSION", "ImageError", "load_image", "save_image"]

IMAGE_MAGIC = b"SKNAND\r\n"
IMAGE_VERSION = 1
_HEADER = struct.Struct(">8sHHIIIIIIIQIII")
_PAGE_HEAD = struct.Struct(">IB")


class ImageError(Exception):
    """The file is not a valid flash image (foreign, corrupt, truncated or another version)."""


def save_image(flash: NandFlash, path: str | PathLike[str]) -> None:
    """Write ``flash`` to ``path``."""
    g = flash.geometry
    parts = [struct.pack(f">{g.blocks}I", *flash._erase_counts)]
    bad = sorted(flash._bad)
    parts.append(struct.pack(f">I{len(bad)}I", len(bad), *bad))
    pages = sorted(flash._pages)
    parts.append(struct.pack(">I", len(pages)))
    for index in pages:
        raw = flash._held(index) or b""
        parts.append(_PAGE_HEAD.pack(index, flash._nop.get(index, 1)))
        parts.append(raw.ljust(g.raw_page, b"\xff"))  # held without trailing 0xFF, written whole
    body = zlib.compress(b"".join(parts), 6)
    head = _HEADER.pack(IMAGE_MAGIC, IMAGE_VERSION, 0, g.page_size, g.spare_size, g.pages_per_block,
                        g.blocks, g.nop, g.endurance, g.ecc_bits_per_512, flash.ops, len(body),
                        zlib.crc32(body), 0)
    head = head[:-4] + struct.pack(">I", zlib.crc32(head[:-4]))
    with open(path, "wb") as f:
        f.write(head)
        f.write(body)


def load_image(path: str | PathLike[str], *, rng: random.Random | None = None,
               faults: FlashFaults | None = None) -> NandFlash:
    """Read an image written by ``save_image``; ImageError if it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
            if len(head) < _HEADER.size or head[:8] != IMAGE_MAGIC:
                raise ImageError(f"{path}: not a flash image (bad magic)")
            (_magic, version, _flags, page_size, spare_size, ppb, blocks, nop, endurance, ecc, ops,
             body_len, body_crc, head_crc) = _HEADER.unpack(head)
            if zlib.crc32(head[:-4]) != head_crc:
                raise ImageError(f"{path}: corrupt image header (checksum mismatch)")
            if version != IMAGE_VERSION:
                raise ImageError(f"{path}: image version {version} not supported (expected {IMAGE_VERSION})")
            try:
                geometry = Geometry(page_size, spare_size, ppb, blocks, nop, endurance, ecc)
            except ValueError as exc:
                raise ImageError(f"{path}: bad geometry in image: {exc}") from None
            body = f.read(body_len + 1)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image: {exc.strerror or exc}") from None
    if len(body) != body_len:
        raise ImageError(f"{path}: image truncated or has trailing bytes")
    if zlib.crc32(body) != body_crc:
        raise ImageError(f"{path}: corrupt image body (checksum mismatch)")
    limit = 4 * blocks + 8 + 4 * blocks + (_PAGE_HEAD.size + geometry.raw_page) * geometry.pages
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ImageError(f"{path}: corrupt image body: {exc}") from None
    if len(raw) > limit or not inflater.eof:
        raise ImageError(f"{path}: image body larger than its geometry allows")
    flash = NandFlash(geometry, rng=rng, faults=faults or FlashFaults())
    try:
        _fill(flash, memoryview(raw))
    except (struct.error, ValueError) as exc:
        raise ImageError(f"{path}: malformed image body: {exc}") from None
    flash.ops = ops
    return flash


def _fill(flash: NandFlash, raw: memoryview) -> None:
    g = flash.geometry
    pos = 4 * g.blocks
    flash._erase_counts = list(struct.unpack_from(f">{g.blocks}I", raw, 0))
    (n_bad,) = struct.unpack_from(">I", raw, pos)
    pos += 4
    bad = struct.unpack_from(f">{n_bad}I", raw, pos)
    pos += 4 * n_bad
    if any(b >= g.blocks for b in bad):
        raise ValueError("bad block number out of range")
    flash._bad = set(bad)
    (n_pages,) = struct.unpack_from(">I", raw, pos)
    pos += 4
    if n_pages > g.pages:
        raise ValueError("more pages than the geometry holds")
    ppb = g.pages_per_block
    size = g.raw_page
    for _ in range(n_pages):
        index, nop = _PAGE_HEAD.unpack_from(raw, pos)
        pos += _PAGE_HEAD.size
        if index >= g.pages or not 1 <= nop <= g.nop:
            raise ValueError(f"page record {index} out of range")
        page = bytes(raw[pos:pos + size])
        if len(page) != size:
            raise ValueError("truncated page record")
        pos += size
        flash._pages[index] = page.rstrip(b"\xff")  # the chip holds pages without trailing 0xFF
        flash._nop[index] = nop
        block, offset = divmod(index, ppb)
        if offset >= flash._next_page[block]:
            flash._next_page[block] = offset + 1
    if pos != len(raw):
        raise ValueError("trailing bytes after the page records")
