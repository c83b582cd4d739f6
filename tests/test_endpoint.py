"""Server addresses and URLs, proxy URLs, and the choice of proxy by curl's environment rules."""

from __future__ import annotations

import pytest

from sidekick_testbed.emulator.handset.endpoint import (
    EndpointError,
    ProxyURL,
    ServerURL,
    choose_proxy,
    no_proxy_matches,
    parse_proxy,
    parse_server,
)


@pytest.mark.parametrize(("text", "http", "want"), [
    ("example.net:7400", False, ServerURL("example.net", 7400)),
    ("7400", False, ServerURL("127.0.0.1", 7400)),
    ("[::1]:7401", True, ServerURL("::1", 7401, "/sync", True)),
    ("http://example.net:8080/sync", False, ServerURL("example.net", 8080, "/sync", True)),
    ("http://example.net", False, ServerURL("example.net", 80, "/sync", True)),
    ("http://example.net/carrier/sync?x=1", False, ServerURL("example.net", 80, "/carrier/sync?x=1", True)),
    ("HTTP://[::1]:9/s", False, ServerURL("::1", 9, "/s", True)),
])
def test_servers(text: str, http: bool, want: ServerURL) -> None:
    assert parse_server(text, http=http) == want


def test_server_urls_print_as_given() -> None:
    assert str(parse_server("http://[::1]:9/s")) == "http://[::1]:9/s"
    assert str(parse_server("h:1")) == "h:1"


@pytest.mark.parametrize("text", ["https://example.net/sync", "tcp://h:1", "h:x", "h:0", "h:70000",
                                  "http://u:p@h/sync", "http://:80/sync", "http://h:99999/", "http://h/a b",
                                  "http://h/#frag"])
def test_bad_servers_are_one_clear_error(text: str) -> None:
    with pytest.raises(EndpointError):
        parse_server(text)


@pytest.mark.parametrize(("text", "want"), [
    ("proxy.example:3128", ProxyURL("proxy.example", 3128)),
    ("proxy.example", ProxyURL("proxy.example", 1080)),  # curl's default proxy port
    ("http://carrier:s%40cret@10.0.0.1:8080/", ProxyURL("10.0.0.1", 8080, "carrier", "s@cret")),
    ("http://[::1]:3128", ProxyURL("::1", 3128)),
])
def test_proxies(text: str, want: ProxyURL) -> None:
    assert parse_proxy(text) == want


def test_proxy_credentials_become_basic_and_never_print() -> None:
    proxy = parse_proxy("http://carrier:s3cret@p:1")
    assert proxy.authorization == "Basic Y2FycmllcjpzM2NyZXQ="
    assert "s3cret" not in str(proxy) and str(proxy) == "http://p:1"


@pytest.mark.parametrize("text", ["socks5://p:1080", "https://p:443", "http://:8080", "p:notaport"])
def test_unsupported_proxies_are_refused(text: str) -> None:
    with pytest.raises(EndpointError):
        parse_proxy(text)


@pytest.mark.parametrize(("host", "no_proxy", "exempt"), [
    ("example.com", "example.com", True),
    ("www.example.com", "example.com", True),
    ("www.example.com", ".example.com", True),
    ("example.com", ".example.com", True),
    ("notexample.com", "example.com", False),
    ("EXAMPLE.com.", "example.COM", True),
    ("a.b", "x.y, a.b", True),
    ("a.b", "x.y a.b", True),
    ("a.b", "x.y,,,a.b", True),
    ("anything", "*", True),
    ("anything", "*,x", False),  # only a lone * is the wildcard
    ("192.168.1.7", "192.168.0.0/16", True),
    ("192.168.1.7", "192.168.1.7", True),
    ("192.168.1.7", "10.0.0.0/8", False),
    ("192.168.1.7", "192.168.1", False),  # no partial addresses
    ("::1", "::1", True),
    ("2001:db8::5", "2001:db8::/32", True),
    ("2001:db8::5", "[2001:db8::5]", True),
    ("example.com", "", False),
])
def test_no_proxy_follows_curl(host: str, no_proxy: str, exempt: bool) -> None:
    assert no_proxy_matches(host, no_proxy) is exempt


HTTP = ServerURL("sync.example", 80, "/sync", True)
RAW = ServerURL("sync.example", 7400)


@pytest.mark.parametrize(("server", "explicit", "env", "want"), [
    (HTTP, None, {}, None),
    (HTTP, None, {"http_proxy": "p:1"}, ProxyURL("p", 1)),
    (HTTP, None, {"HTTP_PROXY": "p:1"}, None),  # curl never reads HTTP_PROXY (it is a CGI request header)
    (HTTP, None, {"all_proxy": "a:2", "ALL_PROXY": "b:3"}, ProxyURL("a", 2)),  # lower case first
    (HTTP, None, {"ALL_PROXY": "b:3"}, ProxyURL("b", 3)),
    (HTTP, None, {"http_proxy": "p:1", "all_proxy": "a:2"}, ProxyURL("p", 1)),  # the scheme's variable wins
    (HTTP, None, {"http_proxy": ""}, None),
    (HTTP, None, {"http_proxy": "p:1", "no_proxy": "ample"}, ProxyURL("p", 1)),
    (HTTP, None, {"http_proxy": "p:1", "no_proxy": "example"}, None),
    (HTTP, None, {"http_proxy": "p:1", "no_proxy": ".example"}, None),
    (HTTP, None, {"http_proxy": "p:1", "NO_PROXY": "*"}, None),
    (HTTP, None, {"http_proxy": "p:1", "no_proxy": "other", "NO_PROXY": "*"}, ProxyURL("p", 1)),  # lower wins
    (HTTP, "x:9", {"http_proxy": "p:1"}, ProxyURL("x", 9)),  # --proxy wins
    (HTTP, "x:9", {"no_proxy": "sync.example"}, None),       # no_proxy applies to --proxy too
    (HTTP, "", {"http_proxy": "p:1"}, None),                 # --proxy "" means none
    (RAW, None, {"http_proxy": "p:1", "all_proxy": "a:2"}, None),  # the environment is for HTTP only
    (RAW, "x:9", {}, ProxyURL("x", 9)),
])
def test_choose_proxy(server: ServerURL, explicit: str | None, env: dict[str, str], want: ProxyURL | None) -> None:
    assert choose_proxy(server, explicit, env) == want
