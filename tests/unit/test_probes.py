"""Reachability probes (adapters/probes.py) on what users write in their settings."""

from __future__ import annotations

import socket

import pytest

from metrify.adapters.probes import bootstrap_addresses, probe_database, probe_kafka


@pytest.mark.parametrize(
    ("bootstrap", "addresses"),
    [
        ("kafka1:9092", [("kafka1", 9092)]),
        ("kafka1", [("kafka1", 9092)]),
        ("kafka1:9093, kafka2:9094", [("kafka1", 9093), ("kafka2", 9094)]),
        ("PLAINTEXT://kafka1:9095,SASL_SSL://kafka2:9096", [("kafka1", 9095), ("kafka2", 9096)]),
        ("[::1]:9097", [("::1", 9097)]),
        ("[::1]", [("::1", 9092)]),
        (":9098", [("127.0.0.1", 9098)]),
        (" , ", []),
    ],
)
def test_bootstrap_lists_read_as_kafka_clients_read_them(bootstrap: str, addresses: list[tuple[str, int]]) -> None:
    assert bootstrap_addresses(bootstrap) == addresses


@pytest.mark.parametrize("bootstrap", ["kafka1:abc", "kafka1:0", "kafka1:70000", "[::1]:x"])
def test_a_bad_port_is_named(bootstrap: str) -> None:
    with pytest.raises(ValueError, match="bad port"):
        bootstrap_addresses(bootstrap)
    assert probe_kafka(bootstrap).startswith("unreachable: bad port")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_broker_of_the_list_is_tried_and_named() -> None:
    first, second = _closed_port(), _closed_port()
    answer = probe_kafka(f"127.0.0.1:{first},PLAINTEXT://127.0.0.1:{second}")
    assert answer.startswith("unreachable:")
    assert f"127.0.0.1:{first}" in answer and f"127.0.0.1:{second}" in answer


def test_a_postgres_url_is_probed_through_psycopg_3() -> None:
    # postgres:// is what many hosts hand out; SQLAlchemy alone would look for psycopg2
    answer = probe_database(f"postgres://metrify@127.0.0.1:{_closed_port()}/metrify")
    assert answer.startswith("unreachable:")
    assert "psycopg2" not in answer and "NoSuchModule" not in answer
