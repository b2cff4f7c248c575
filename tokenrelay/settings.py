"""Configuration from the environment (prefix ``TOKENRELAY_``), validated once at start."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tokenrelay import redis_url as urls

UpstreamKind = Literal["openai", "ollama", "sse"]


class UpstreamConfig(BaseModel):
    """One configured model endpoint. Clients name it; they never send a URL."""

    model_config = {"extra": "forbid", "frozen": True}

    kind: UpstreamKind
    base_url: HttpUrl
    api_key: SecretStr | None = None
    timeout_s: float = Field(
        default=300.0, gt=0, description="first-token and idle (between-token) timeout"
    )
    connect_timeout_s: float | None = Field(default=None, gt=0)
    first_token_timeout_s: float | None = Field(default=None, gt=0)
    idle_timeout_s: float | None = Field(default=None, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=10, description="tries before the first delta")
    max_concurrency: int | None = Field(
        default=None, ge=1, description="streams at once to this upstream, from all workers"
    )
    default_model: str | None = None

    @property
    def connect_s(self) -> float:
        return self.connect_timeout_s or min(10.0, self.timeout_s)

    @property
    def first_token_s(self) -> float:
        return self.first_token_timeout_s or self.timeout_s

    @property
    def idle_s(self) -> float:
        return self.idle_timeout_s or self.timeout_s

    @property
    def url(self) -> str:
        return str(self.base_url).rstrip("/")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TOKENRELAY_", extra="ignore", frozen=True, env_ignore_empty=True
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Additions: where the queue and the streams live when not both in redis_url.
    queue_url: str | None = None
    streams_url: str | None = None
    streams_cluster: bool = Field(
        default=False, description="streams_url names one node of a Redis Cluster"
    )
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    default_upstream: str | None = None
    api_keys: SecretStr = SecretStr("")
    stream_ttl_s: int = Field(default=86400, gt=0)

    # Additions to the contract's table, documented in docs/contract-additions.md.
    job_timeout_s: float = Field(default=3600.0, gt=0, description="whole-job deadline")
    retry_budget_s: float = Field(default=60.0, ge=0, description="total time spent retrying")
    write_retry_s: float = Field(
        default=30.0, gt=0, description="how long a Redis write is retried before the job ends"
    )
    redis_timeout_s: float = Field(
        default=5.0, gt=0, description="a Redis reply (or connect) slower than this is lost"
    )
    max_jobs_per_worker: int = Field(default=256, gt=0)
    lease_ttl_s: float = Field(
        default=5.0, ge=0.5, description="a job whose worker is silent this long is ended"
    )
    shutdown_grace_s: float = Field(
        default=20.0, ge=0, description="on SIGTERM, how long running jobs may finish"
    )
    stream_maxlen: int = Field(default=100_000, gt=0, description="events kept per job (MAXLEN ~)")
    keepalive_s: float = Field(default=15.0, gt=0, le=15.0)
    queue_poll_s: float = Field(
        default=1.0, gt=0, description="fallback queue poll when no wake-up"
    )
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    max_header_bytes: int = Field(
        default=16_384, ge=1024, description="request header bytes (names, values); then 400"
    )
    max_prompt_chars: int = Field(default=500_000, gt=0)
    max_events_per_job: int = Field(default=50_000, ge=10, description="then it ends: length")
    rate_limit_per_min: int = Field(default=0, ge=0, description="jobs per key a minute; 0 = off")
    max_queue_depth: int = Field(default=10_000, gt=0, description="queued jobs; then 503")
    cors_origins: str = Field(
        default="", description="browser origins that may call the API, comma-separated; * any"
    )
    stream_long_poll_s: float = Field(
        default=20.0, gt=0, le=300, description="Durable Streams long-poll wait before its 204"
    )
    stream_retention_s: int = Field(
        default=604_800, gt=0, description="Durable Streams created without a TTL: kept this long"
    )
    stream_max_message_bytes: int = Field(
        default=262_144, gt=0, description="Durable Streams message size; then 413"
    )
    durability: Literal["local", "replicated"] = Field(
        default="local",
        description="replicated: listeners see an event only once a replica holds it (WAIT 1)",
    )
    replica_wait_s: float = Field(
        default=1.0, gt=0, le=30, description="one WAIT for a replica; then it is tried again"
    )
    restore_events: int = Field(
        default=1024,
        ge=0,
        description="local: events kept per running job, written again if a failover lost them",
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    @field_validator("redis_url", "queue_url", "streams_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        return None if value is None else urls.check(value)

    @model_validator(mode="after")
    def _check_sentinel_not_cluster(self) -> Settings:
        if self.streams_cluster and urls.is_sentinel(self.streams_dsn):
            raise ValueError(
                "TOKENRELAY_STREAMS_CLUSTER: a Redis Cluster has no Sentinels; name one of its "
                "nodes with redis:// or rediss://"
            )
        return self

    @property
    def queue_dsn(self) -> str:
        return self.queue_url or self.redis_url

    @property
    def streams_dsn(self) -> str:
        return self.streams_url or self.redis_url

    @model_validator(mode="after")
    def _check_default_upstream(self) -> Settings:
        if self.default_upstream is not None and self.default_upstream not in self.upstreams:
            raise ValueError(
                f"TOKENRELAY_DEFAULT_UPSTREAM names {self.default_upstream!r}, "
                f"which is not in TOKENRELAY_UPSTREAMS ({sorted(self.upstreams)})"
            )
        return self

    @property
    def unfinished_ttl_s(self) -> int:
        """How long a job that has not ended keeps its keys: longer than any job can take,
        so nothing lives forever even if every worker vanished."""
        return self.stream_ttl_s + int(self.job_timeout_s) + 86400

    @property
    def resolved_default_upstream(self) -> str | None:
        if self.default_upstream is not None:
            return self.default_upstream
        if len(self.upstreams) == 1:
            return next(iter(self.upstreams))
        return None

    @property
    def api_key_list(self) -> tuple[str, ...]:
        raw = self.api_keys.get_secret_value()
        return tuple(key.strip() for key in raw.split(",") if key.strip())

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        return tuple(o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip())
