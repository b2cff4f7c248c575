"""Metrics shared by every process through Redis, exported by the API at ``/metrics``.

Workers add to counters and histogram buckets in one Redis hash when a job ends (one
pipelined round trip a job, never one a delta), so a scrape of any API process sees the
whole deployment, however many workers run. Gauges (queue depth, running jobs, live
workers) are read at scrape time; the API's own gauges (streams, listeners) are local.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from tokenrelay.keys import METRICS_KEY

WORKER_ALIVE_S = 10.0

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
SEP = "\x1f"  # between a metric's name and its label values in a hash field


def _field(name: str, *labels: str) -> str:
    return SEP.join((name, *labels))


def record_job(
    pipe: Any,
    *,
    status: str,
    upstream: str,
    ttft_s: float | None,
    duration_s: float,
    deltas: int,
    error_type: str | None,
) -> None:
    """Add one finished job to the shared metrics, as commands queued on ``pipe``."""
    pipe.hincrby(METRICS_KEY, _field("jobs", status, upstream), 1)
    pipe.hincrby(METRICS_KEY, _field("deltas", upstream), deltas)
    if error_type is not None:
        pipe.hincrby(METRICS_KEY, _field("errors", error_type, upstream), 1)
    for name, value, buckets in (
        ("ttft", ttft_s, TTFT_BUCKETS),
        ("duration", duration_s, DURATION_BUCKETS),
    ):
        if value is None:
            continue
        bucket = next((b for b in buckets if value <= b), None)
        pipe.hincrby(METRICS_KEY, _field(name, upstream, str(bucket) if bucket else "+Inf"), 1)
        pipe.hincrbyfloat(METRICS_KEY, _field(name + "_sum", upstream), value)


def _histogram(
    name: str,
    doc: str,
    counts: Mapping[str, dict[str, int]],
    sums: Mapping[str, float],
    buckets: Iterable[float],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["upstream"])
    for upstream, per_bucket in sorted(counts.items()):
        cumulative, out = 0, []
        for bound in [*(str(b) for b in buckets), "+Inf"]:
            cumulative += per_bucket.get(bound, 0)
            out.append((bound if bound == "+Inf" else str(float(bound)), cumulative))
        family.add_metric([upstream], out, sum_value=sums.get(upstream, 0.0))
    return family


def render(raw: Mapping[bytes, bytes], gauges: Mapping[str, float]) -> bytes:
    """The Prometheus text exposition of the shared hash plus point-in-time gauges."""
    jobs = CounterMetricFamily("tokenrelay_jobs", "Finished jobs", labels=["status", "upstream"])
    deltas = CounterMetricFamily(
        "tokenrelay_deltas_published", "Deltas published", labels=["upstream"]
    )
    errors = CounterMetricFamily(
        "tokenrelay_upstream_errors", "Jobs ended by an error, by type", labels=["type", "upstream"]
    )
    hist: dict[str, dict[str, dict[str, int]]] = {"ttft": {}, "duration": {}}
    sums: dict[str, dict[str, float]] = {"ttft": {}, "duration": {}}
    for key, raw_value in raw.items():
        name, *labels = key.decode().split(SEP)
        if name == "jobs":
            jobs.add_metric(labels, int(raw_value))
        elif name == "deltas":
            deltas.add_metric(labels, int(raw_value))
        elif name == "errors":
            errors.add_metric(labels, int(raw_value))
        elif name in hist:
            upstream, bound = labels
            hist[name].setdefault(upstream, {})[bound] = int(raw_value)
        elif name.endswith("_sum"):
            sums[name.removesuffix("_sum")][labels[0]] = float(raw_value)
    families = [
        jobs,
        deltas,
        errors,
        _histogram(
            "tokenrelay_ttft_seconds",
            "Upstream request to first token",
            hist["ttft"],
            sums["ttft"],
            TTFT_BUCKETS,
        ),
        _histogram(
            "tokenrelay_job_duration_seconds",
            "Upstream request to end",
            hist["duration"],
            sums["duration"],
            DURATION_BUCKETS,
        ),
    ]
    for gauge_name, gauge_value in gauges.items():
        gauge = GaugeMetricFamily(f"tokenrelay_{gauge_name}", gauge_name.replace("_", " "))
        gauge.add_metric([], gauge_value)
        families.append(gauge)

    class _Snapshot(Collector):
        def collect(self) -> Iterable[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot())
    return generate_latest(registry)
