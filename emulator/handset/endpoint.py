"""Where a handset's sync goes: the server (an address or a URL) and the forward proxy between.

``parse_server`` takes ``HOST:PORT`` (the raw binding, or the HTTP binding at ``/sync`` when asked)
or ``http://HOST[:PORT][/PATH]`` (the HTTP binding at that URL; port 80, path ``/sync`` when left
out). ``parse_proxy`` takes a forward proxy as curl does: ``[http://][USER:PASSWORD@]HOST[:PORT]``,
port 1080 when left out. ``choose_proxy`` picks the proxy for one sync by curl's rules for an
``http://`` URL: an explicit ``--proxy`` wins (``""`` means none); else ``http_proxy`` (lower case
only: the upper-case ``HTTP_PROXY`` is what a CGI script's request header ``Proxy:`` becomes, so
curl never reads it), then ``all_proxy``, then ``ALL_PROXY``; and no proxy at all for a host that
``no_proxy`` (else ``NO_PROXY``) names. The environment names proxies for the HTTP binding only:
the raw binding has no URL scheme for curl's ``[scheme]_proxy`` rule, so it goes through a proxy
(by ``CONNECT``) only when ``--proxy`` names one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

from sidekick_testbed.protocol.http_client import basic_credentials
from sidekick_testbed.protocol.http_common import DEFAULT_PATH

__all__ = [
    "DEFAULT_PROXY_PORT",
    "EndpointError",
    "ProxyURL",
    "ServerURL",
    "choose_proxy",
    "no_proxy_matches",
    "parse_proxy",
    "parse_server",
]

DEFAULT_PROXY_PORT = 1080
"""curl's port for a proxy named without one."""


class EndpointError(ValueError):
    """A server address, URL or proxy that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class ServerURL:
    """The server of a sync: ``http`` is True for the HTTP binding (then ``path`` is its path)."""

    host: str
    port: int
    path: str = DEFAULT_PATH
    http: bool = False

    @property
    def authority(self) -> str:
        """``host:port`` (an IPv6 address in brackets)."""
        return _authority(self.host, self.port)

    def __str__(self) -> str:
        return f"http://{self.authority}{self.path}" if self.http else self.authority


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """A forward HTTP proxy, with the Basic credentials it wants (if any)."""

    host: str
    port: int
    user: str | None = None
    password: str | None = None

    @property
    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` header value, if credentials were given."""
        if self.user is None:
            return None
        return basic_credentials(self.user, self.password or "")

    def __str__(self) -> str:  # never shows the password
        return f"http://{_authority(self.host, self.port)}"


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port(text: str, what: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise EndpointError(f"bad {what}: port {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise EndpointError(f"bad {what}: port {port} out of range")
    return port


def _host_port(parts: SplitResult, what: str) -> tuple[str, int | None]:
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise EndpointError(f"{what}: bad port") from None
    if not host:
        raise EndpointError(f"{what}: no host")
    return host, port


def parse_server(text: str, *, http: bool = False, default_host: str = "127.0.0.1") -> ServerURL:
    """``HOST:PORT``, ``PORT`` or ``http://HOST[:PORT][/PATH]`` (see the module docstring)."""
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme.lower() != "http":
            raise EndpointError(f"bad server URL {text!r}: only http:// URLs (the HTTP binding) are supported"
                                + ("; TLS belongs to a proxy in front of the server" if parts.scheme == "https" else ""))
        if parts.username is not None or parts.fragment:
            raise EndpointError(f"bad server URL {text!r}: no user or #fragment allowed")
        host, port_number = _host_port(parts, f"bad server URL {text!r}")
        path = parts.path or DEFAULT_PATH
        if parts.query:
            path += "?" + parts.query
        if any(c <= " " or c > "~" for c in path):
            raise EndpointError(f"bad server URL {text!r}: the path must be visible ASCII (percent-encode the rest)")
        return ServerURL(host, 80 if port_number is None else port_number, path, True)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = default_host, text
    host = host.strip("[]") or default_host
    return ServerURL(host, _port(port_text, f"address {text!r} (expected HOST:PORT or http://HOST:PORT/PATH)"),
                     DEFAULT_PATH, http)


def parse_proxy(text: str) -> ProxyURL:
    """``[http://][USER:PASSWORD@]HOST[:PORT]`` (port 1080 when left out), as curl reads a proxy."""
    target = text if "://" in text else "http://" + text
    parts = urlsplit(target)
    if parts.scheme.lower() != "http":
        raise EndpointError(f"proxy {text!r}: only http:// proxies are supported, not {parts.scheme}://")
    host, port = _host_port(parts, f"proxy {text!r}")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return ProxyURL(host, DEFAULT_PROXY_PORT if port is None else port, user, password)


def no_proxy_matches(host: str, no_proxy: str) -> bool:
    """Whether ``no_proxy`` (curl's list: names separated by commas or blanks) exempts ``host``:
    ``*`` alone matches every host; a name matches itself and its subdomains (a leading or
    trailing dot is ignored, case too: ``example.com`` matches ``www.example.com``, not
    ``notexample.com``); for an IP address, an entry is an address or a CIDR network."""
    if not host or not no_proxy:
        return False
    if no_proxy.strip() == "*":
        return True
    bare = host.strip("[]")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(bare)
    except ValueError:
        address = None
    name = bare.rstrip(".").lower()
    for token in no_proxy.replace(",", " ").split():
        if address is not None:
            try:
                if address in ipaddress.ip_network(token.strip("[]"), strict=False):
                    return True
            except ValueError:
                continue
            continue
        entry = token.strip(".").lower()
        if entry and (name == entry or name.endswith("." + entry)):
            return True
    return False


def _env(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def choose_proxy(server: ServerURL, explicit: str | None, env: Mapping[str, str]) -> ProxyURL | None:
    """The proxy one sync goes through (see the module docstring), or None for a direct connection."""
    if explicit is not None:
        text: str | None = explicit.strip() or None
    elif server.http:
        text = _env(env, "http_proxy", "all_proxy", "ALL_PROXY")
    else:
        text = None
    if text is None:
        return None
    no_proxy = _env(env, "no_proxy", "NO_PROXY")
    if no_proxy is not None and no_proxy_matches(server.host, no_proxy):
        return None
    return parse_proxy(text)
