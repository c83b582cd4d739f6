"""HMAC-SHA256 challenge-response: right key passes, wrong key and replayed answers fail."""

from __future__ import annotations

from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from sidekick_testbed.protocol import auth
from sidekick_testbed.protocol.messages import Auth
from sidekick_testbed.protocol.session import DeviceSession, ServerSession
from tests.session_pair import ACCOUNT, DEVICE_ID, DEVICE_NONCE, SERVER_ID, Pair

keys = st.binary(min_size=1, max_size=64)
nonces = st.binary(min_size=16, max_size=16)
FIELDS = st.fixed_dictionaries(
    {
        "server_nonce": nonces,
        "device_nonce": nonces,
        "account": st.text(max_size=12),
        "device_id": st.binary(min_size=16, max_size=16),
        "server_id": st.binary(min_size=16, max_size=16),
    }
)


@given(keys, FIELDS)
def test_right_key_verifies_both_ways(key: bytes, fields: dict[str, Any]) -> None:
    assert len(auth.device_mac(key, **fields)) == 32
    assert auth.verify(auth.device_mac(key, **fields), auth.device_mac(key, **fields))
    assert auth.verify(auth.server_mac(key, **fields), auth.server_mac(key, **fields))


@given(keys, FIELDS)
def test_device_and_server_macs_are_not_interchangeable(key: bytes, fields: dict[str, Any]) -> None:
    assert not auth.verify(auth.device_mac(key, **fields), auth.server_mac(key, **fields))


# HMAC pads a key shorter than its 64-byte block with zeros, so b"k" and b"k\x00" are the same key:
# a wrong key is one of the same length (device keys are 16 to 64 bytes; the examples use 32).
key_pairs = st.integers(min_value=1, max_value=64).flatmap(
    lambda n: st.tuples(st.binary(min_size=n, max_size=n), st.binary(min_size=n, max_size=n)))


@given(key_pairs, FIELDS)
def test_wrong_key_fails(pair: tuple[bytes, bytes], fields: dict[str, Any]) -> None:
    key, other = pair
    assume(key != other)
    assert not auth.verify(auth.device_mac(key, **fields), auth.device_mac(other, **fields))
    assert not auth.verify(auth.server_mac(key, **fields), auth.server_mac(other, **fields))


@given(keys, FIELDS, FIELDS, st.sampled_from(["server_nonce", "device_nonce", "account", "device_id", "server_id"]))
def test_every_field_is_bound(key: bytes, fields: dict[str, Any], others: dict[str, Any], name: str) -> None:
    assume(fields[name] != others[name])
    changed = {**fields, name: others[name]}
    assert not auth.verify(auth.device_mac(key, **fields), auth.device_mac(key, **changed))


def test_field_boundaries_are_unambiguous() -> None:
    common: dict[str, Any] = dict(server_nonce=b"", device_nonce=b"", device_id=b"", server_id=b"")
    key = b"key"
    a = auth.device_mac(key, account="ab", **common)
    b = auth.device_mac(key, **{**common, "account": "a", "device_id": b"b"})
    assert a != b


def _handshake_until_auth(server_nonce: bytes) -> tuple[Pair, Auth]:
    pair = Pair(DeviceSession(), ServerSession())
    pair.exchange(pair.device.role, [pair.device.hello(ACCOUNT, DEVICE_ID)])
    pair.exchange(pair.server.role, [pair.server.challenge(SERVER_ID, server_nonce)])
    assert pair.device.server_nonce == server_nonce
    mac = auth.device_mac(
        b"device key", server_nonce=server_nonce, device_nonce=DEVICE_NONCE, account=ACCOUNT,
        device_id=DEVICE_ID, server_id=SERVER_ID,
    )
    [received] = pair.exchange(pair.device.role, [Auth(DEVICE_NONCE, mac)])
    assert isinstance(received, Auth)
    return pair, received


def _server_accepts(pair: Pair, answer: Auth) -> bool:
    s = pair.server
    assert s.server_nonce is not None and s.account is not None and s.device_id is not None
    assert s.server_id is not None
    expected = auth.device_mac(
        b"device key", server_nonce=s.server_nonce, device_nonce=answer.device_nonce, account=s.account,
        device_id=s.device_id, server_id=s.server_id,
    )
    return auth.verify(expected, answer.mac)


@given(nonces, nonces)
def test_replayed_auth_from_an_old_session_fails(old_nonce: bytes, new_nonce: bytes) -> None:
    assume(old_nonce != new_nonce)
    old_pair, recorded = _handshake_until_auth(old_nonce)
    assert _server_accepts(old_pair, recorded)
    new_pair, _ = _handshake_until_auth(new_nonce)
    assert not _server_accepts(new_pair, recorded)
