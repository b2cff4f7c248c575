"""Redis URLs: the plain forms redis-py reads, and the Sentinel form tokenrelay adds.

``redis+sentinel://[user:password@]host:port[,host:port...]/<service>[/<db>]`` names a set of
Sentinels and the service (master name) they watch; ``rediss+sentinel://`` is the same with
TLS to the data nodes and the Sentinels. The user and password are the data nodes'; Sentinels
that need their own take ``?sentinel_password=`` (and ``?sentinel_username=``). Clients built
from it ask the Sentinels for the current primary on every (re)connect, so they follow a
promotion.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
PLAIN_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL. ``repr`` never shows a password."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def __repr__(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"SentinelUrl({hosts}/{self.service}/{self.db}, tls={self.tls})"

    def node_kwargs(self) -> dict[str, object]:
        """Connection options of the data nodes (the primary and its replicas)."""
        kwargs: dict[str, object] = {"db": self.db}
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password
        if self.tls:
            kwargs["ssl"] = True
        return kwargs

    def sentinel_kwargs(self) -> dict[str, object]:
        """Connection options of the Sentinels themselves."""
        kwargs: dict[str, object] = {}
        if self.sentinel_username:
            kwargs["username"] = self.sentinel_username
        if self.sentinel_password:
            kwargs["password"] = self.sentinel_password
        if self.tls:
            kwargs["ssl"] = True
        return kwargs


def is_sentinel(url: str) -> bool:
    return url.split("://", 1)[0] in SENTINEL_SCHEMES


def check(url: str) -> str:
    """``url`` if tokenrelay can connect with it; ``ValueError`` (quoting no password)
    otherwise."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in PLAIN_SCHEMES:
        return url
    if scheme in SENTINEL_SCHEMES:
        parse_sentinel(url)
        return url
    raise ValueError(
        "a Redis URL must start with redis://, rediss://, unix://, redis+sentinel:// or "
        "rediss+sentinel://"
    )


def parse_sentinel(url: str) -> SentinelUrl:
    """Parse a ``redis+sentinel://`` or ``rediss+sentinel://`` URL.

    Raises ``ValueError`` when it names no Sentinel, no service, a bad port or database. The
    message never contains the password.
    """
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL (scheme {parts.scheme!r})")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    sentinels = tuple(_host_port(item) for item in hostlist.split(",") if item)
    if not sentinels:
        raise ValueError("a Sentinel URL must name at least one Sentinel host:port")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("a Sentinel URL's path is /<service name>[/<db>]")
    service = unquote(path[0])
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError(f"a Sentinel URL's database must be a number, not {path[1]!r}")
        db = int(path[1])
    query = parse_qs(parts.query)
    return SentinelUrl(
        sentinels=sentinels,
        service=service,
        db=db,
        username=username,
        password=password,
        tls=parts.scheme == "rediss+sentinel",
        sentinel_username=query.get("sentinel_username", [None])[0],
        sentinel_password=query.get("sentinel_password", [None])[0],
    )


def _host_port(item: str) -> tuple[str, int]:
    host, has_port, port = item.rpartition(":")
    if not has_port or item.endswith("]"):
        return item, DEFAULT_SENTINEL_PORT
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # an IPv6 literal
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"a Sentinel address must be host:port, not {item!r}")
    return host, int(port)
