"""Outgoing webhook requests that can't be turned against us: URL checks and a POST to a checked address.

Server-side request forgery: whoever may add an endpoint could point it at the metadata service
(169.254.169.254), the database, or an admin page on localhost. Every address the name resolves to
must be public (unless NEWSLETTER_WEBHOOK_ALLOW_PRIVATE), and the connection goes to the address
that was checked, not to whatever a second DNS look-up returns (DNS rebinding); the Host header and
TLS (SNI and the certificate check) still use the name. Redirects are not followed: a 3xx could
point anywhere.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import idna
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError

MAX_URL_LENGTH = 2048
# Only the start of an answer is kept (the delivery log shows it); the rest is not even read.
MAX_ANSWER_BYTES = 4096
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class BadWebhookUrl(ValueError):
    """A URL no endpoint may have; the message says why."""


class RefusedAddress(Exception):
    """The URL's host is (or resolves to) an address webhooks may not reach."""


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv6 one that carries it (IPv4-mapped, 6to4, NAT64, Teredo), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64 or address in NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Whether webhooks may reach `address`: globally routable, not multicast, and so is any IPv4 it carries."""
    inner = embedded_ipv4(address)
    if inner is not None and not is_public(inner):
        return False
    if address.is_multicast or address.is_unspecified or address.is_loopback or address.is_link_local:
        return False
    # fec0::/10, deprecated (RFC 3879) but still routed inside some networks; is_global says True for it.
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return False
    if inner is not None:
        # A public IPv4 address in IPv6 clothing (::ffff:203.0.113.7 aside, which is reserved itself).
        return address not in NAT64_LOCAL
    return address.is_global and not (address.is_private or address.is_reserved)


def ascii_host(host: str) -> str:
    """The host as DNS, the Host header and TLS take it: an internationalized name as its A-labels
    ("bücher.example" -> "xn--bcher-kva.example"); ValueError if it is no valid name."""
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as error:
        raise ValueError(str(error)) from None


def literal_address(host: str) -> IPAddress | None:
    """The IP address a URL's host names literally (brackets stripped), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def check_url(url: str, *, allow_private: bool) -> str:
    """`url` stripped, if an endpoint may have it; BadWebhookUrl saying what is wrong otherwise.

    Absolute http(s), a host, no user name or password in it (they would be sent in clear in logs
    and pages), at most MAX_URL_LENGTH characters, and not a literal private address. A name is
    only resolved when a delivery is made (see `post`): it may point elsewhere by then.
    """
    url = (url or "").strip()
    if not url:
        raise BadWebhookUrl("Enter the URL the events are sent to.")
    if len(url) > MAX_URL_LENGTH:
        raise BadWebhookUrl(f"The URL can be at most {MAX_URL_LENGTH} characters long.")
    if any(character.isspace() or ord(character) < 32 for character in url):
        raise BadWebhookUrl("The URL can't contain spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise BadWebhookUrl(f"This is not a valid URL ({error}).") from None
    if parts.scheme.lower() not in {"http", "https"}:
        raise BadWebhookUrl("The URL must start with https:// (or http://).")
    if not parts.hostname:
        raise BadWebhookUrl("The URL must name a host, e.g. https://crm.example.org/hooks/newsletter.")
    if parts.username is not None or parts.password is not None:
        raise BadWebhookUrl("The URL can't hold a user name or password: the signature proves where events "
                            "come from; put any key of the receiver's in the path or query.")
    if port == 0:
        raise BadWebhookUrl("The URL's port must be from 1 to 65535.")
    try:
        ascii_host(parts.hostname)
    except ValueError as error:
        raise BadWebhookUrl(f"The host name {parts.hostname!r} is not a valid internationalized name ({error}).") \
            from None
    address = literal_address(parts.hostname)
    if address is not None and not allow_private and not is_public(address):
        raise BadWebhookUrl(f"{address} is a private, loopback, link-local or reserved address: webhooks are not "
                            "sent there unless NEWSLETTER_WEBHOOK_ALLOW_PRIVATE is on.")
    return url


# A first path segment shown to viewers: a plain word ("hooks", "services", "api"), not a key.
_PLAIN_SEGMENT = re.compile(r"[A-Za-z][A-Za-z._-]{0,23}")


def masked_url(url: str) -> str:
    """`url` as viewers see it: scheme, host and port, and at most a first path segment that is a plain
    word, the rest as "…" (a receiver's key is often in the path or the query, and many hook URLs are
    bearer secrets themselves: https://hooks.slack.com/services/…)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "…"
    host = parts.hostname or ""
    shown = f"{parts.scheme}://{f'[{host}]' if ':' in host else host}{f':{port}' if port else ''}"
    segments = parts.path.split("/")[1:]
    if segments and _PLAIN_SEGMENT.fullmatch(segments[0]):
        shown += "/" + segments[0]
        if len(segments) > 1 or parts.query:
            shown += "/…" if len(segments) > 1 else "?…"
    elif any(segments) or parts.query:
        shown += "/…"
    return shown


def resolve(host: str, port: int, *, allow_private: bool) -> IPAddress:
    """The address to connect to for `host`; RefusedAddress if ANY address it resolves to is not public."""
    literal = literal_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as error:
            raise RefusedAddress(f"The host {host!r} could not be resolved ({error}).") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in found))
        if not addresses:
            raise RefusedAddress(f"The host {host!r} has no address.")
    if not allow_private:
        refused = [address for address in addresses if not is_public(address)]
        if refused:
            raise RefusedAddress(f"{host} resolves to {', '.join(map(str, refused))}: a private, loopback, "
                                 "link-local or reserved address; not sent (NEWSLETTER_WEBHOOK_ALLOW_PRIVATE is off).")
    return addresses[0]


class DeadlinePassed(HTTPError):
    """No complete answer came within the request's deadline: its connection was cut."""


class _Deadline:
    """The wall-clock limit of one request: when it passes, the connection in use is shut down.

    urllib3's timeouts are per socket operation: a receiver sending a byte now and then holds the
    sender for ever. Shutting the socket down wakes the blocked read at once, whatever it waits for.
    """

    def __init__(self, seconds: float) -> None:
        self.passed = False
        self._connections: list[_Watched] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def watch(self, connection: _Watched) -> None:
        with self._lock:
            self._connections.append(connection)
            if self.passed:
                connection.cut()

    def _cut(self) -> None:
        with self._lock:
            self.passed = True
            for connection in self._connections:
                connection.cut()

    def __enter__(self) -> _Deadline:
        _current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        _current.deadline = None


_current = threading.local()


class _Watched:
    """A connection the running request's _Deadline can cut: it keeps a duplicate of its socket to shut down."""

    _watch: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        self._forget()
        # A duplicate of the descriptor, not the socket: TLS wrapping takes the socket object over.
        self._watch = sock.dup()
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.watch(self)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.watch(self)
        super().request(*args, **kwargs)  # type: ignore[misc]

    def cut(self) -> None:
        if self._watch is not None:
            with contextlib.suppress(OSError):
                self._watch.shutdown(socket.SHUT_RDWR)

    def _forget(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def close(self) -> None:
        super().close()  # type: ignore[misc]
        self._forget()


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


@dataclass(frozen=True)
class Answer:
    """What a receiver answered: its status, the start of its body, and where a redirect pointed."""

    status: int
    body_start: str
    duration_ms: int
    location: str | None = None


class WebhookClient:
    """POSTs to webhook URLs through the address checked for each; keeps connections for reuse.

    A pool is kept per (scheme, address, port, name): a name that resolves elsewhere later gets a
    pool of its own, never a connection to an address that was not checked.
    """

    def __init__(self, *, timeout: float, allow_private: bool, max_pools: int = 32) -> None:
        self.timeout = timeout
        # The whole request (connect, send, the answer's headers and start) within this, however slowly it drips.
        self.deadline = 2 * timeout
        self.allow_private = allow_private
        self._pools: dict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = {}
        self._max_pools = max_pools
        # The sender posts to several endpoints at once, from threads of its own.
        self._lock = threading.Lock()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        """POST `body` to `url`; RefusedAddress for an address not allowed, urllib3's HTTPError when no answer came."""
        check_url(url, allow_private=self.allow_private)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = ascii_host(parts.hostname or "")
        port = parts.port or (443 if scheme == "https" else 80)
        address = resolve(host, port, allow_private=self.allow_private)
        pool = self._pool(scheme, address, port, host)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        netloc_host = f"[{host}]" if ":" in host else host
        default_port = 443 if scheme == "https" else 80
        request_headers = {**headers, "Host": netloc_host if port == default_port else f"{netloc_host}:{port}"}
        started = time.perf_counter()
        with _Deadline(self.deadline) as deadline:
            try:
                response = pool.urlopen("POST", target, body=body, headers=request_headers, redirect=False,
                                        retries=False, preload_content=False, assert_same_host=False)
                try:
                    start = response.read(MAX_ANSWER_BYTES, decode_content=False)
                finally:
                    # What is left unread is dropped with its connection: a receiver can't make us read megabytes.
                    if response.length_remaining or deadline.passed:
                        response.close()
                    else:
                        response.release_conn()
            except Exception as error:
                if deadline.passed:
                    raise DeadlinePassed(f"No complete answer within {self.deadline:g} s; the connection was "
                                         "closed.") from error
                raise
            if deadline.passed:
                raise DeadlinePassed(f"No complete answer within {self.deadline:g} s; the connection was closed.")
        duration_ms = int((time.perf_counter() - started) * 1000)
        location = response.headers.get("Location") if 300 <= response.status < 400 else None
        return Answer(response.status, start.decode("utf-8", "replace"), duration_ms, location)

    def _pool(self, scheme: str, address: IPAddress, port: int, host: str) -> urllib3.HTTPConnectionPool:
        with self._lock:
            return self._pool_locked(scheme, address, port, host)

    def _pool_locked(self, scheme: str, address: IPAddress, port: int, host: str) -> urllib3.HTTPConnectionPool:
        key = (scheme, str(address), port, host)
        pool = self._pools.get(key)
        if pool is None:
            if len(self._pools) >= self._max_pools:
                self._close_pools()
            options: dict[str, Any] = {"timeout": urllib3.Timeout(connect=self.timeout, read=self.timeout),
                                       "maxsize": 1, "retries": False}
            if scheme == "https":
                # Connected to the address, TLS still speaks to the name: SNI and the certificate check use it.
                pool = urllib3.HTTPSConnectionPool(str(address), port, server_hostname=host, assert_hostname=host,
                                                   cert_reqs="CERT_REQUIRED", **options)
            else:
                pool = urllib3.HTTPConnectionPool(str(address), port, **options)
            pool.ConnectionCls = _WatchedHTTPSConnection if scheme == "https" else _WatchedHTTPConnection
            self._pools[key] = pool
        return pool

    def close(self) -> None:
        with self._lock:
            self._close_pools()

    def _close_pools(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


__all__ = ["Answer", "BadWebhookUrl", "DeadlinePassed", "HTTPError", "RefusedAddress", "WebhookClient", "check_url", "is_public", "masked_url",
           "resolve"]
