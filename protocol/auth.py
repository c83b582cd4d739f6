"""HMAC-SHA256 challenge-response: no secret on the wire, no replay across sessions.

The server sends a fresh ``server_nonce`` in CHALLENGE; the device answers AUTH with its own
``device_nonce`` and ``device_mac``; the server checks it and proves in HELLO_OK, with
``server_mac``, that it knows the key too. Both MACs cover the same transcript (both nonces, the
account, the device id, the server id), each under its own domain label, so neither can stand in
for the other, and an AUTH recorded in one session fails in any session with a new server nonce.
Every field is length-prefixed (u32, big-endian), so no two transcripts share an encoding.
"""

from __future__ import annotations

import hmac
from typing import Final

__all__ = ["DEVICE_LABEL", "SERVER_LABEL", "device_mac", "server_mac", "verify"]

DEVICE_LABEL: Final = b"sidekick/v1/auth/device"
SERVER_LABEL: Final = b"sidekick/v1/auth/server"


def _transcript(
    label: bytes, *, server_nonce: bytes, device_nonce: bytes, account: str, device_id: bytes, server_id: bytes
) -> bytes:
    parts = (label, server_nonce, device_nonce, account.encode("utf-8"), device_id, server_id)
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def device_mac(
    key: bytes, *, server_nonce: bytes, device_nonce: bytes, account: str, device_id: bytes, server_id: bytes
) -> bytes:
    """The device's proof of the key for this challenge (32 bytes, carried by AUTH)."""
    data = _transcript(
        DEVICE_LABEL, server_nonce=server_nonce, device_nonce=device_nonce, account=account,
        device_id=device_id, server_id=server_id,
    )
    return hmac.digest(key, data, "sha256")


def server_mac(
    key: bytes, *, server_nonce: bytes, device_nonce: bytes, account: str, device_id: bytes, server_id: bytes
) -> bytes:
    """The server's proof of the key for this session (32 bytes, carried by HELLO_OK)."""
    data = _transcript(
        SERVER_LABEL, server_nonce=server_nonce, device_nonce=device_nonce, account=account,
        device_id=device_id, server_id=server_id,
    )
    return hmac.digest(key, data, "sha256")


def verify(expected: bytes, got: bytes) -> bool:
    """Constant-time comparison of two MACs."""
    return hmac.compare_digest(expected, got)
