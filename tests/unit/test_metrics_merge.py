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
