"""Unit tests of tokenrelay.redis_url: the Sentinel URL form, and the settings that take it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

from tokenrelay.redis_url import SentinelUrl, check, is_sentinel, parse_sentinel
from tokenrelay.settings import Settings
from tokenrelay.store.connections import sentinel_pool


def test_a_sentinel_url_names_its_sentinels_service_and_database() -> None:
    url = parse_sentinel("redis+sentinel://app:s%40cret@10.0.0.1:26379,sent-b:26380/mymaster/3")
    assert url == SentinelUrl(
        sentinels=(("10.0.0.1", 26379), ("sent-b", 26380)),
        service="mymaster",
        db=3,
        username="app",
        password="s@cret",
    )
    assert url.node_kwargs() == {"db": 3, "username": "app", "password": "s@cret"}
    assert url.sentinel_kwargs() == {}
    assert "s@cret" not in repr(url)


def test_defaults_tls_and_the_sentinels_own_password() -> None:
    url = parse_sentinel("rediss+sentinel://:pw@s1,[::1]:26390/cache?sentinel_password=sp")
    assert url.sentinels == (("s1", 26379), ("::1", 26390))
    assert (url.service, url.db, url.username, url.password) == ("cache", 0, None, "pw")
    assert url.tls and url.node_kwargs()["ssl"] is True
    assert url.sentinel_kwargs() == {"password": "sp", "ssl": True}


@pytest.mark.parametrize(
    "bad",
    [
        "redis+sentinel:///mymaster",  # no sentinel
        "redis+sentinel://h:1",  # no service
        "redis+sentinel://h:1/m/x",  # database not a number
        "redis+sentinel://h:1/m/0/extra",
        "redis+sentinel://h:99999/m",
        "redis+sentinel://:secret@h:port/m",
    ],
)
def test_a_malformed_sentinel_url_is_refused_without_its_password(bad: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_sentinel(bad)
    assert "secret" not in str(caught.value)


def test_which_urls_are_accepted() -> None:
    for good in ("redis://h:1/0", "rediss://h", "unix:///tmp/r.sock", "redis+sentinel://h/m"):
        assert check(good) == good
    assert is_sentinel("rediss+sentinel://h/m") and not is_sentinel("redis://h")
    with pytest.raises(ValueError, match="redis\\+sentinel://"):
        check("http://h:1")


def test_settings_take_a_sentinel_url_for_each_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_REDIS_URL", "redis+sentinel://h:26379/mymaster/0")
    monkeypatch.setenv("TOKENRELAY_QUEUE_URL", "redis+sentinel://h:26379/queue/1")
    monkeypatch.setenv("TOKENRELAY_DURABILITY", "replicated")
    settings = Settings()
    assert settings.streams_dsn.endswith("/mymaster/0")
    assert settings.queue_dsn.endswith("/queue/1")
    assert settings.durability == "replicated"
    monkeypatch.setenv("TOKENRELAY_STREAMS_CLUSTER", "true")
    with pytest.raises(ValidationError, match="no Sentinels"):
        Settings()


def test_durability_is_local_unless_set_and_only_the_two_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().durability == "local"
    monkeypatch.setenv("TOKENRELAY_DURABILITY", "quorum")
    with pytest.raises(ValidationError, match="durability"):
        Settings()


def test_the_pool_reaches_the_primary_through_the_sentinels_with_tls_when_asked() -> None:
    plain = sentinel_pool("redis+sentinel://:pw@h1:1,h2:2/svc/2", socket_timeout=3.0)
    assert plain.service_name == "svc" and plain.is_master
    assert plain.connection_class is SentinelManagedConnection
    assert plain.connection_kwargs["password"] == "pw" and plain.connection_kwargs["db"] == 2
    sentinels = plain.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
    assert sentinels[0].connection_pool.connection_kwargs["socket_timeout"] == 3.0
    tls = sentinel_pool("rediss+sentinel://h1:1/svc")
    assert tls.connection_class is SentinelManagedSSLConnection
