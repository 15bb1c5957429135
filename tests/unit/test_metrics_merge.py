"""Merging the workers' Prometheus expositions into one (pure). (/metrics over HTTP: e2e/test_metrics.py.)"""

from __future__ import annotations


def test_merging_workers_expositions() -> None:
    from tokenwire.runtime.metrics import merge_expositions

    a = (
        "# HELP t_total Things.\n# TYPE t_total counter\n"
        't_total{m="x"} 2\n'
        "# TYPE tokenwire_build_info gauge\n"
        'tokenwire_build_info{version="1"} 1\n'
        "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 200.5\n"
    )
    b = (
        "# HELP t_total Things.\n# TYPE t_total counter\n"
        't_total{m="x"} 3\nt_total{m="y"} 1.5\n'
        "# TYPE tokenwire_build_info gauge\n"
        'tokenwire_build_info{version="1"} 1\n'
        "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 100.25\n"
    )
    merged = merge_expositions([a, b]).splitlines()
    assert merged == [
        "# HELP t_total Things.",
        "# TYPE t_total counter",
        't_total{m="x"} 5',
        't_total{m="y"} 1.5',
        "# TYPE tokenwire_build_info gauge",
        'tokenwire_build_info{version="1"} 1',  # not 2: one version
        "# TYPE process_start_time_seconds gauge",
        "process_start_time_seconds 100.25",  # the earliest worker
    ]


def test_maxima_take_the_largest_and_created_the_earliest() -> None:
    from tokenwire.runtime.metrics import merge_expositions

    a = (
        "# TYPE tokenwire_send_buffer_max_bytes gauge\n"
        'tokenwire_send_buffer_max_bytes{transport="ws"} 300.0\n'
        "# TYPE tokenwire_send_buffer_bytes gauge\n"
        'tokenwire_send_buffer_bytes{transport="ws"} 500.0\n'
        "# TYPE process_max_fds gauge\nprocess_max_fds 1024.0\n"
        "# TYPE x_created gauge\nx_created 20.0\n"
        "# TYPE tokenwire_token_gap_max_seconds histogram\ntokenwire_token_gap_max_seconds_count 3.0\n"
    )
    b = a.replace("300.0", "900.0").replace("500.0", "901.0").replace("20.0", "10.0")
    assert merge_expositions([a, b]).splitlines() == [
        "# TYPE tokenwire_send_buffer_max_bytes gauge",
        'tokenwire_send_buffer_max_bytes{transport="ws"} 900',  # the fullest socket of either worker
        "# TYPE tokenwire_send_buffer_bytes gauge",
        'tokenwire_send_buffer_bytes{transport="ws"} 1401',  # all of them
        "# TYPE process_max_fds gauge",
        "process_max_fds 1024",
        "# TYPE x_created gauge",
        "x_created 10",
        "# TYPE tokenwire_token_gap_max_seconds histogram",
        "tokenwire_token_gap_max_seconds_count 6",  # a histogram of maxima still adds up
    ]


def test_the_page_is_what_prometheus_client_parses() -> None:
    """Every family of a fresh gateway's page, as prometheus_client's own parser reads it (no sockets)."""
    from prometheus_client.parser import text_string_to_metric_families

    from tokenwire.runtime.metrics import Metrics, merge_expositions

    class _Stats(dict):
        pass

    class _Registry:
        runs: dict = {}  # noqa: RUF012
        stats = _Stats(resumes=2)
        store = None

    m = Metrics(_Registry(), set())  # type: ignore[arg-type]
    m.loop_lag.observe(0.003)
    m.client_error("stream_expired")
    m.upstream_errors[("openai", "upstream_error", "")] = 1
    page = m.render()
    families = {f.name: f for f in text_string_to_metric_families(page)}
    assert families["tokenwire_reconnects"].type == "counter"
    assert families["tokenwire_reconnects"].samples[0].value == 3
    lag = {s.name: s.value for s in families["tokenwire_event_loop_lag_seconds"].samples if "le" not in s.labels}
    assert lag == {"tokenwire_event_loop_lag_seconds_count": 1, "tokenwire_event_loop_lag_seconds_sum": 0.003}
    (err,) = families["tokenwire_upstream_errors"].samples
    assert err.labels == {"provider": "openai", "code": "upstream_error"}  # no empty upstream_status
    merged = {f.name: f for f in text_string_to_metric_families(merge_expositions([page, page]))}
    assert merged.keys() == families.keys()
    assert merged["tokenwire_reconnects"].samples[0].value == 6


def test_token_gaps_are_sampled_by_the_tick_not_timed_per_token() -> None:
    """A stall shows within one tick; a stream that moves at every tick, a pause and TTFT show nothing."""
    import asyncio
    from types import SimpleNamespace

    from tokenwire.runtime.metrics import LAG_INTERVAL, Metrics

    gate = asyncio.Event()
    gate.set()

    class Run:  # hashed by identity, like relay.Run
        def __init__(self) -> None:
            self.gen = SimpleNamespace(token_count=0, ended=False)
            self.gate = gate
            self.max_gap = 0.0

    run = Run()
    registry = SimpleNamespace(runs={"s": run}, stats={}, store=None)
    m = Metrics(registry, set())  # type: ignore[arg-type]
    t = 100.0

    def tick(tokens: int) -> None:
        nonlocal t
        run.gen.token_count = tokens
        m._sample_gaps(t)
        t += LAG_INTERVAL

    for n in (0, 0, 0, 1, 2, 3, 4):  # a long TTFT, then a token at every tick
        tick(n)
    assert run.max_gap == 0.0
    for n in (5, 5, 5, 5, 6):  # silent from the tick that saw 5 to the one that saw 6
        tick(n)
    assert run.max_gap == 4 * LAG_INTERVAL
    gate.clear()  # the client paused: its own silence is not a stall
    for n in (6, 6, 6, 6, 6, 6, 6, 6):
        tick(n)
    gate.set()
    tick(6)
    tick(7)
    assert run.max_gap == 4 * LAG_INTERVAL
