"""Call durations (``mesh_upstream_request_duration_seconds``): counted per method and status class,
whatever methods and statuses arrive, in bounded memory."""

from __future__ import annotations

from fastapi_mesh.observability.durations import UPSTREAM_BUCKETS, CallDurations


def test_calls_are_counted_by_method_and_status_class() -> None:
    durations = CallDurations()
    durations.observe_call("GET", 200, 0.004)
    durations.observe_call("get", 204, 0.02)
    durations.observe_call("GET", 503, 0.2)
    durations.observe_call("POST", None, 1.5)
    assert sorted(durations.series) == [("GET", "2xx"), ("GET", "5xx"), ("POST", "error")]
    ok = durations.cumulative(("GET", "2xx"))
    assert ok[UPSTREAM_BUCKETS.index(0.005)] == 1  # 4 ms at or below 5 ms, 20 ms above it
    assert ok[UPSTREAM_BUCKETS.index(0.025)] == 2
    assert ok[-1] == 2
    assert durations.series[("GET", "2xx")][-1] == 0.024


def test_any_method_and_status_keeps_the_label_set_and_the_memory_bounded() -> None:
    """Custom methods are ``OTHER``; however many (method, status) pairs come, each call lands in the right
    series and what is kept to find them stays bounded."""
    durations = CallDurations()
    for i in range(1_000):
        durations.observe_call(f"PURGE{i}", 100 + i % 500, 0.001)
        durations.observe_call("GET", 200, 0.001)
    assert {method for method, _ in durations.series} == {"OTHER", "GET"}
    assert {code for _, code in durations.series} == {"1xx", "2xx", "3xx", "4xx", "5xx"}
    assert len(durations.series) == 6
    assert sum(durations.merged()[:-1]) == 2_000
    assert durations.cumulative(("GET", "2xx"))[-1] == 1_000
    assert durations.cumulative(("OTHER", "2xx"))[-1] == 200  # statuses 200-299 of the custom methods
    assert len(durations._rows) <= 64
