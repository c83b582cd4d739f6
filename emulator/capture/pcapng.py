"""A pcapng writer (the standard library's ``struct`` only): section header, interfaces, name
resolution, and packets with comments.

Block layouts are those of the pcapng specification (IETF draft-ietf-opsawg-pcapng): every block is
``type u32, total length u32, body, total length u32``, little-endian here, padded to 4 bytes;
options are ``code u16, length u16, value`` padded to 4 bytes and ended by ``opt_endofopt``.
Timestamps are microseconds since 1970-01-01 UTC (the default ``if_tsresol``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import BinaryIO, Final

__all__ = ["LINKTYPE_RAW", "LINKTYPE_WIRESHARK_UPPER_PDU", "PcapngWriter"]

LINKTYPE_RAW: Final = 101
"""Raw IPv4/IPv6 packets, no link-layer header."""
LINKTYPE_WIRESHARK_UPPER_PDU: Final = 252
"""Wireshark's exported PDUs: tags naming a dissector, then the PDU it dissects."""

_SHB: Final = 0x0A0D0D0A
_IDB: Final = 0x00000001
_NRB: Final = 0x00000004
_EPB: Final = 0x00000006
_BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D
_OPT_END: Final = 0
_OPT_COMMENT: Final = 1
_SHB_USERAPPL: Final = 4
_IF_NAME: Final = 2
_IF_DESCRIPTION: Final = 3
_NRB_IPV4: Final = 1
_NRB_END: Final = 0
SNAPLEN: Final = 0  # no limit


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _options(options: Iterable[tuple[int, bytes]]) -> bytes:
    body = b"".join(struct.pack("<HH", code, len(value)) + _pad(value) for code, value in options)
    return body + struct.pack("<HH", _OPT_END, 0) if body else b""


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


class PcapngWriter:
    """Writes one pcapng section to a binary file: ``interface`` first, then ``packet``s."""

    def __init__(self, out: BinaryIO, *, application: str, comment: str = "") -> None:
        self._out = out
        self._interfaces = 0
        options = [(_SHB_USERAPPL, application.encode())]
        if comment:
            options.insert(0, (_OPT_COMMENT, comment.encode()))
        self._out.write(_block(_SHB, struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + _options(options)))

    def interface(self, linktype: int, name: str, description: str = "") -> int:
        """Describe an interface; returns its id for ``packet``."""
        options = [(_IF_NAME, name.encode())]
        if description:
            options.append((_IF_DESCRIPTION, description.encode()))
        self._out.write(_block(_IDB, struct.pack("<HHI", linktype, 0, SNAPLEN) + _options(options)))
        self._interfaces += 1
        return self._interfaces - 1

    def names(self, entries: Iterable[tuple[bytes, str]]) -> None:
        """A name resolution block: IPv4 addresses (4 bytes) and their host names."""
        records = b""
        for address, name in entries:
            value = address + name.encode() + b"\0"
            records += struct.pack("<HH", _NRB_IPV4, len(value)) + _pad(value)
        if records:
            self._out.write(_block(_NRB, records + struct.pack("<HH", _NRB_END, 0)))

    def packet(self, interface: int, timestamp: float, data: bytes, comment: str = "") -> None:
        """An enhanced packet block; ``timestamp`` in seconds since the epoch."""
        if not 0 <= interface < self._interfaces:
            raise ValueError(f"no interface {interface}")
        micros = max(0, round(timestamp * 1_000_000))
        body = struct.pack("<IIIII", interface, micros >> 32, micros & 0xFFFFFFFF, len(data), len(data))
        body += _pad(data)
        if comment:
            text = comment.encode()[:65000].decode("utf-8", "ignore").encode()  # an option is < 64 KiB
            body += _options([(_OPT_COMMENT, text)])
        self._out.write(_block(_EPB, body))

    def flush(self) -> None:
        """Push what was written to the file."""
        self._out.flush()
