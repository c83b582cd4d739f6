"""Admin HTTP API (h11) on its own port.

Unprotected: ``GET /healthz``, ``GET /metrics`` (Prometheus text). Everything else needs the admin
token (``Authorization: Bearer <token>`` or ``X-Admin-Token``) and answers JSON:

* ``GET /accounts``; ``POST /accounts`` (``{"account": NAME, "key": HEX}``);
  ``DELETE /accounts/<name>``; ``GET /accounts/<name>/records``; ``GET /accounts/<name>/devices``
* ``GET /faults``; ``POST /faults/<name>/on``; ``POST /faults/<name>/off``
* ``POST /backup`` (body ``{"path": ...}`` for a SQLite file, or empty: kept in memory, an id is
  returned); ``POST /restore`` (``{"path": ...}`` or ``{"snapshot": id}``) -> the new generation
* ``GET /generation``

A known path asked with another method gets 405 with ``Allow`` (the health and metrics paths
without a token, the others once the token is right); an unknown path 404 (401 without a token).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any
from urllib.parse import unquote

import h11
import trio

from sidekick_testbed.protocol.records import Record
from sidekick_testbed.server_stub.faults import ALL_FAULT_MODES, UnknownFault
from sidekick_testbed.server_stub.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from sidekick_testbed.server_stub.state import ServerState
from sidekick_testbed.server_stub.storage import AccountExists, StorageError, UnknownAccount

__all__ = ["record_json", "serve_admin_stream"]

log = logging.getLogger("sidekick.admin")
MAX_BODY = 64 * 1024
MAX_HEADER = 8192


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


_OPEN = "open"  # a route that needs no token
_ROUTES: list[tuple[re.Pattern[str], str, tuple[str, ...]]] = [
    (re.compile(pattern), access, methods) for pattern, access, methods in (
        (r"/healthz", _OPEN, ("GET",)),
        (r"/metrics", _OPEN, ("GET",)),
        (r"/accounts", "", ("GET", "POST")),
        (r"/accounts/[^/]+", "", ("DELETE",)),
        (r"/accounts/[^/]+/(records|devices)", "", ("GET",)),
        (r"/faults", "", ("GET",)),
        (r"/faults/[^/]+/(on|off)", "", ("POST",)),
        (r"/generation", "", ("GET",)),
        (r"/backup", "", ("POST",)),
        (r"/restore", "", ("POST",)),
    )
]


def _allowed(path: str) -> tuple[bool, tuple[str, ...]] | None:
    """Whether ``path`` is open, and the methods it takes; None for an unknown path."""
    normal = "/" + "/".join(p for p in path.split("/") if p)
    for pattern, access, methods in _ROUTES:
        if pattern.fullmatch(normal):
            return access == _OPEN, methods
    return None


def record_json(record: Record) -> dict[str, Any]:
    """A record as JSON-friendly values (bytes as hex)."""
    body: dict[str, Any] = {}
    for name in record.body.__slots__:
        value = getattr(record.body, name)
        body[name] = value.hex() if isinstance(value, bytes) else list(value) if isinstance(value, tuple) else value
    return {
        "record_id": record.record_id.hex(), "version": record.version, "deleted": record.deleted,
        "kind": record.kind.name.lower(), "conflict_of": record.conflict_of.hex(), "body": body,
    }


async def serve_admin_stream(server: ServerState, stream: trio.abc.Stream) -> None:
    """Serve one admin connection (keep-alive, one request at a time)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER)
    try:
        while True:
            request, body = await _read_request(conn, stream, server.limits.idle_timeout)
            if request is None:
                return
            status: int
            try:
                status, content_type, payload = await _route(server, request, body)
            except _HttpError as exc:
                status, content_type = exc.status, "application/json"
                payload = json.dumps({"error": exc.message}).encode()
                await _respond(conn, stream, status, content_type, payload, exc.headers)
            else:
                await _respond(conn, stream, status, content_type, payload)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (h11.RemoteProtocolError, _HttpError) as exc:
        hint = int(getattr(exc, "error_status_hint", 0) or getattr(exc, "status", 0) or 400)
        try:
            await _respond(conn, stream, hint, "text/plain", b"bad request\n")
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


async def _read_request(conn: h11.Connection, stream: trio.abc.Stream,
                        timeout: float) -> tuple[h11.Request | None, bytes]:
    request: h11.Request | None = None
    body = bytearray()
    with trio.fail_after(timeout):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(bytes(data))
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None, b""
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise _HttpError(413, "body too large")
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)


async def _respond(conn: h11.Connection, stream: trio.abc.Stream, status: int, content_type: str,
                   payload: bytes, extra: list[tuple[str, str]] | None = None) -> None:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(payload))), *(extra or [])]
    out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
    out += conn.send(h11.Data(data=payload)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(out)


def _json(value: Any, status: int = 200) -> tuple[int, str, bytes]:
    return status, "application/json", (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


def _authorized(server: ServerState, request: h11.Request) -> bool:
    token = server.admin_token
    if not token:
        return False
    for name, value in request.headers:
        if name == b"authorization" and value.startswith(b"Bearer "):
            return hmac.compare_digest(value[7:].strip(), token.encode())
        if name == b"x-admin-token":
            return hmac.compare_digest(value.strip(), token.encode())
    return False


async def _route(server: ServerState, request: h11.Request, body: bytes) -> tuple[int, str, bytes]:
    method = request.method.decode()
    path = unquote(request.target.decode("latin-1").split("?", 1)[0])
    parts = [p for p in path.split("/") if p]
    route = _allowed(path)
    open_route = route is not None and route[0]
    if not open_route and not _authorized(server, request):
        raise _HttpError(401, "admin token required")
    if route is not None and method not in route[1]:
        allow = ", ".join(route[1])
        raise _HttpError(405, f"{path} takes {allow}", [("Allow", allow)])
    if path == "/healthz":
        return 200, "text/plain", b"ok\n"
    if path == "/metrics":
        return 200, METRICS_CONTENT_TYPE, server.metrics.render(server.storage).encode()
    storage = server.storage
    try:
        if parts == ["accounts"] and method == "GET":
            return _json([_info(info) for info in await storage.list_accounts()])
        if parts == ["accounts"] and method == "POST":
            return _json(await _add_account(server, _body_json(body)), 201)
        if len(parts) == 2 and parts[0] == "accounts" and method == "DELETE":
            await storage.remove_account(parts[1])
            return _json({"removed": parts[1]})
        if len(parts) == 3 and parts[0] == "accounts" and method == "GET":
            if parts[2] == "records":
                return _json([record_json(r) for r in await storage.records(parts[1])])
            if parts[2] == "devices":
                return _json([{"device_id": d.device_id.hex(), "durable_lsn": d.durable_lsn, "anchor": d.anchor,
                               "generation": d.generation} for d in await storage.devices(parts[1])])
        if parts == ["faults"] and method == "GET":
            return _json({name: {"on": server.faults.on(name), "description": text}
                          for name, text in ALL_FAULT_MODES.items()})
        if len(parts) == 3 and parts[0] == "faults" and parts[2] in ("on", "off") and method == "POST":
            (server.faults.enable if parts[2] == "on" else server.faults.disable)(parts[1])
            log.warning("fault %s switched %s", parts[1], parts[2])
            return _json({"fault": parts[1], "on": parts[2] == "on"})
        if parts == ["generation"] and method == "GET":
            return _json({"generation": storage.generation, "server_id": storage.server_id.hex()})
        if parts == ["backup"] and method == "POST":
            return _json(await _backup(server, _body_json(body)))
        if parts == ["restore"] and method == "POST":
            return _json(await _restore(server, _body_json(body)))
    except UnknownAccount as exc:
        raise _HttpError(404, str(exc)) from None
    except AccountExists as exc:
        raise _HttpError(409, str(exc)) from None
    except UnknownFault as exc:
        raise _HttpError(404, str(exc)) from None
    except StorageError as exc:
        raise _HttpError(500, str(exc)) from None
    raise _HttpError(404, f"no route {method} {path}")


def _info(info: Any) -> dict[str, Any]:
    return {name: getattr(info, name) for name in info.__slots__}


def _body_json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        raise _HttpError(400, "body is not JSON") from None
    if not isinstance(value, dict):
        raise _HttpError(400, "body must be a JSON object")
    return value


async def _add_account(server: ServerState, args: dict[str, Any]) -> dict[str, Any]:
    name, key_hex = args.get("account"), args.get("key")
    if not isinstance(name, str) or not name or not isinstance(key_hex, str):
        raise _HttpError(400, 'needs {"account": NAME, "key": HEX}')
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        raise _HttpError(400, "key must be hex") from None
    if len(key) < 16:
        raise _HttpError(400, "key must be at least 16 bytes")
    await server.storage.add_account(name, key)
    return {"account": name}


async def _blocking(storage: Any, fn: Any, *args: Any) -> Any:
    """Run a backup/restore call: in a worker thread for a file-backed store, inline otherwise."""
    if hasattr(storage, "backup_to_file"):
        return await trio.to_thread.run_sync(fn, *args)
    return fn(*args)


async def _backup(server: ServerState, args: dict[str, Any]) -> dict[str, Any]:
    storage = server.storage
    path = args.get("path")
    if path is not None:
        to_file = getattr(storage, "backup_to_file", None)
        if to_file is None:
            raise _HttpError(400, "this store keeps backups in memory only: POST /backup without a path")
        await trio.to_thread.run_sync(to_file, str(path))
        return {"path": str(path), "generation": storage.generation}
    snapshot = await _blocking(storage, storage.backup)
    snapshot_id = f"s{len(server.snapshots) + 1}"
    server.snapshots[snapshot_id] = snapshot
    return {"snapshot": snapshot_id, "generation": storage.generation}


async def _restore(server: ServerState, args: dict[str, Any]) -> dict[str, Any]:
    storage = server.storage
    if "path" in args:
        from_file = getattr(storage, "restore_from_file", None)
        if from_file is None:
            raise _HttpError(400, "this store restores in-memory snapshots only")
        generation = await trio.to_thread.run_sync(from_file, str(args["path"]))
    elif "snapshot" in args:
        snapshot = server.snapshots.get(str(args["snapshot"]))
        if snapshot is None:
            raise _HttpError(404, f"no snapshot {args['snapshot']!r}")
        generation = await _blocking(storage, storage.restore, snapshot)
    else:
        raise _HttpError(400, 'restore needs {"path": ...} or {"snapshot": ...}')
    log.warning("store restored: generation %#x", generation)
    return {"generation": generation}
