"""Sessions as a standard capture: synthetic TCP/IP over loopback addresses, and log events.

Each connection becomes one TCP stream with a three-way handshake, sequence and acknowledgement
numbers, segments of at most ``MSS`` bytes, an acknowledgement from the receiver after each
chunk, FIN or RST at the end. The server is 127.0.0.1; clients get 127.0.1.1, 127.0.1.2, ...
by name (the names go into a name resolution block). Events (a power cut, a server crash, the end
of a certification check) are packets of their own on an ``events`` interface: a syslog message
(Wireshark's exported-PDU link type) whose pcapng comment repeats the text, so that Wireshark
shows the event in the packet list at its time and lists it under Expert Info and Capture File
Properties. A comment can also ride on a TCP segment (``comment=``), e.g. a network fault.
"""

from __future__ import annotations

import struct
from importlib import metadata
from typing import BinaryIO, Final

from sidekick_testbed.emulator.capture.pcapng import LINKTYPE_RAW, LINKTYPE_WIRESHARK_UPPER_PDU, PcapngWriter

__all__ = ["HTTP_PORT", "MSS", "RAW_PORT", "SERVER_NAME", "Capture", "Severity", "TcpStream"]

MSS: Final = 1460
"""Largest segment payload: an Ethernet-sized segment, so that large frames span segments."""
RAW_PORT: Final = 7400
HTTP_PORT: Final = 7401
"""Server ports of synthetic sessions: the defaults of ``sidekick serve`` (the dissector's ports)."""
SERVER_NAME: Final = "server"
_SERVER_IP: Final = bytes((127, 0, 0, 1))
_FIRST_CLIENT_PORT: Final = 49152
_WINDOW_SHIFT: Final = 7
_SYN_OPTIONS: Final = struct.pack(">BBHBBBB", 2, 4, MSS, 1, 3, 3, _WINDOW_SHIFT)  # MSS, NOP, window scale
_FIN, _SYN, _RST, _PSH, _ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_EXPORTED_DISSECTOR: Final = 12  # exported-PDU tags: name of the dissector for the payload,
_EXPORTED_IPV4_SRC: Final = 20   # and the source address


class Severity:
    """Syslog severities used for events."""

    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFO = 6
    DEBUG = 7


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f">{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _tag(code: int, value: bytes) -> bytes:
    padded = value + b"\0" * (-len(value) % 4)
    return struct.pack(">HH", code, len(padded)) + padded


def _version() -> str:
    try:
        return metadata.version("sidekick-testbed")
    except metadata.PackageNotFoundError:
        return "unknown"


class Capture:
    """One pcapng capture of TCP sessions and events (see the module docstring)."""

    def __init__(self, out: BinaryIO, *, comment: str = "") -> None:
        self._writer = PcapngWriter(out, application=f"sidekick-testbed {_version()}", comment=comment)
        self._ip_interface = self._writer.interface(
            LINKTYPE_RAW, "sessions", "synthetic TCP/IP over loopback: one TCP stream per connection")
        self._event_interface = self._writer.interface(
            LINKTYPE_WIRESHARK_UPPER_PDU, "events", "what happened besides the packets, as syslog messages")
        self._hosts: dict[str, bytes] = {}
        self._next_port = _FIRST_CLIENT_PORT
        self._ip_id = 0
        self.streams = 0
        self.packets = 0
        self.events = 0

    def host(self, name: str) -> bytes:
        """The IPv4 address of ``name`` (127.0.0.1 for ``SERVER_NAME``, else the next free one)."""
        address = self._hosts.get(name)
        if address is None:
            if name == SERVER_NAME:
                address = _SERVER_IP
            else:
                number = sum(1 for other in self._hosts if other != SERVER_NAME)
                block = number // 254
                address = bytes((127, block // 255 % 256, 1 + block % 255, 1 + number % 254))
            self._hosts[name] = address
            self._writer.names([(address, name)])
        return address

    def connect(self, timestamp: float, client: str, *, server_port: int = RAW_PORT, client_port: int | None = None,
                comment: str = "") -> TcpStream:
        """A new TCP stream from host ``client`` to the server: the handshake is written now."""
        if client_port is None:
            client_port = self._next_port
            self._next_port = _FIRST_CLIENT_PORT + (self._next_port + 1 - _FIRST_CLIENT_PORT) % (65536 - _FIRST_CLIENT_PORT)
        self.streams += 1
        stream = TcpStream(self, self.host(client), client_port, self.host(SERVER_NAME), server_port, self.streams)
        stream.open(timestamp, comment)
        return stream

    def event(self, timestamp: float, text: str, *, severity: int = Severity.INFO, comment: str = "",
              host: str | None = None) -> None:
        """An event packet: a syslog message ``text`` (from ``host``'s address, if given), with
        ``comment`` (default: the text) as its comment."""
        message = f"<{8 + severity}>{text}".encode()
        source = _tag(_EXPORTED_IPV4_SRC, self.host(host)) if host is not None else b""
        pdu = _tag(_EXPORTED_DISSECTOR, b"syslog") + source + struct.pack(">HH", 0, 0) + message
        self._writer.packet(self._event_interface, timestamp, pdu, comment or text)
        self.events += 1

    def ip_packet(self, timestamp: float, src: bytes, dst: bytes, segment: bytes, comment: str) -> None:
        """One IPv4 packet carrying a TCP ``segment`` (its checksum already set)."""
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), self._ip_id, 0x4000, 64, 6, 0, src, dst)
        header = header[:10] + struct.pack(">H", _checksum(header)) + header[12:]
        self._writer.packet(self._ip_interface, timestamp, header + segment, comment)
        self.packets += 1

    def flush(self) -> None:
        """Push what was written to the file."""
        self._writer.flush()


class TcpStream:
    """One connection of a ``Capture``: client and server ends, their sequence numbers."""

    def __init__(self, capture: Capture, client_ip: bytes, client_port: int, server_ip: bytes, server_port: int,
                 number: int) -> None:
        self._capture = capture
        self.client = (client_ip, client_port)
        self.server = (server_ip, server_port)
        self.number = number
        isn = (number * 2_654_435_761) & 0xFFFFFFFF
        self._next = {True: isn, False: (isn ^ 0x5A5A5A5A) & 0xFFFFFFFF}  # next seq, by "from client"
        self._fin = {True: False, False: False}
        self.reset_seen = False

    @property
    def closed(self) -> bool:
        """True after a reset or a FIN from both ends."""
        return self.reset_seen or (self._fin[True] and self._fin[False])

    def _segment(self, timestamp: float, from_client: bool, flags: int, payload: bytes = b"", *,
                 options: bytes = b"", comment: str = "") -> None:
        (src, sport), (dst, dport) = (self.client, self.server) if from_client else (self.server, self.client)
        seq = self._next[from_client]
        ack = self._next[not from_client] if flags & _ACK else 0
        window = 0xFFFF
        header = struct.pack(">HHIIBBHHH", sport, dport, seq, ack, (5 + len(options) // 4) << 4, flags, window, 0, 0)
        segment = header + options + payload
        pseudo = struct.pack(">4s4sBBH", src, dst, 0, 6, len(segment))
        segment = segment[:16] + struct.pack(">H", _checksum(pseudo + segment)) + segment[18:]
        self._capture.ip_packet(timestamp, src, dst, segment, comment)
        self._next[from_client] = (seq + len(payload) + (1 if flags & (_SYN | _FIN) else 0)) & 0xFFFFFFFF

    def open(self, timestamp: float, comment: str = "") -> None:
        """The three-way handshake."""
        self._segment(timestamp, True, _SYN, options=_SYN_OPTIONS, comment=comment)
        self._segment(timestamp, False, _SYN | _ACK, options=_SYN_OPTIONS)
        self._segment(timestamp, True, _ACK)

    def data(self, timestamp: float, from_client: bool, data: bytes, comment: str = "") -> None:
        """``data`` sent by one end (in segments of at most ``MSS`` bytes), then the other's ACK."""
        if self.reset_seen or self._fin[from_client] or not data:
            return
        for start in range(0, len(data), MSS):
            last = start + MSS >= len(data)
            self._segment(timestamp, from_client, _ACK | (_PSH if last else 0), data[start:start + MSS],
                          comment=comment if start == 0 else "")
        if not self._fin[not from_client]:
            self._segment(timestamp, not from_client, _ACK)

    def fin(self, timestamp: float, from_client: bool, comment: str = "") -> None:
        """One end closes its sending side (FIN), the other acknowledges."""
        if self.reset_seen or self._fin[from_client]:
            return
        self._segment(timestamp, from_client, _FIN | _ACK, comment=comment)
        self._fin[from_client] = True
        self._segment(timestamp, not from_client, _ACK)

    def reset(self, timestamp: float, from_client: bool | None, comment: str = "") -> None:
        """The connection is reset by one end, or (``None``) by the network: an RST to each end."""
        if self.closed:
            return
        for side in ((True, False) if from_client is None else (from_client,)):
            self._segment(timestamp, side, _RST | _ACK, comment=comment)
            comment = ""
        self.reset_seen = True
