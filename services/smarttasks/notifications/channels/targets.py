"""Where a webhook may go: the host is resolved and every address checked before connecting."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from dataclasses import dataclass

import httpx

MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(Exception):
    """The URL is malformed or points somewhere the service must not send to."""


class TargetUnresolvable(Exception):
    """DNS did not answer for the host (perhaps only for now)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL, pinned to an address that was checked (no second DNS lookup to race)."""

    url: httpx.URL  # with the checked address as host
    host_header: str
    server_name: str | None  # for TLS: SNI and certificate verification


@functools.lru_cache(maxsize=4096)
def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: not loopback, private, link-local, CGNAT, multicast..."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


@functools.lru_cache(maxsize=1024)
def parse_url(url: str) -> httpx.URL:
    """An http(s) URL with a host and no credentials, or TargetRefused saying why not.

    Cached (only what parses): a rule sends to the same URL again and again.
    """
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"webhook URL longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise TargetRefused("webhook URL contains spaces or control characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise TargetRefused(f"invalid webhook URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise TargetRefused(f"webhook URL must be http or https, not {parsed.scheme!r}")
    if not parsed.host:
        raise TargetRefused("webhook URL has no host")
    if parsed.userinfo:
        raise TargetRefused("webhook URL must not carry credentials; use a secretRef")
    return parsed


@functools.lru_cache(maxsize=1024)
def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetUnresolvable(f"cannot resolve {host}: {exc}") from None
    # Scoped IPv6 addresses come back as "fe80::1%eth0".
    addresses = list(
        dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
    )
    if not addresses:
        raise TargetUnresolvable(f"{host} has no addresses")
    return addresses


async def resolve_target(url: str, *, allow_private: bool) -> Target:
    """Check `url` and pin it to one of its host's addresses.

    Every address the name resolves to must be public (unless `allow_private`): a name with
    one public and one private address is refused, since either could be used.
    """
    parsed = parse_url(url)
    host = parsed.host
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    literal = _literal_address(host)
    addresses = [literal] if literal is not None else await _resolve(host, port)
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise TargetRefused(
                    f"webhook target {host} resolves to non-public address {address}; "
                    "refused (set SMARTTASKS_WEBHOOK_ALLOW_PRIVATE=true to allow)"
                )
    netloc = parsed.netloc.decode("ascii")
    if literal is not None:
        return Target(url=parsed, host_header=netloc, server_name=None)
    return Target(
        url=parsed.copy_with(host=str(addresses[0])),
        host_header=netloc,
        server_name=host if parsed.scheme == "https" else None,
    )
