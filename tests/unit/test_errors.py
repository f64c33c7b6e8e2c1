"""Driver errors as transient or terminal (mallard/core/errors.py), as each adapter translates
them: no server needed (DuckDB's, on both write paths: tests/integration/test_replica_errors.py)."""
from __future__ import annotations

import psycopg2
import pytest
from confluent_kafka import KafkaError, KafkaException

from mallard.adapters import kafka, postgres
from mallard.core.changes import PoisonMessage
from mallard.core.errors import TerminalError, TransientError, cause


@pytest.mark.parametrize("code, kind", [
    (KafkaError._TRANSPORT, TransientError), (KafkaError._TIMED_OUT, TransientError),
    (KafkaError._ALL_BROKERS_DOWN, TransientError), (KafkaError.REQUEST_TIMED_OUT, TransientError),
    (KafkaError.MSG_SIZE_TOO_LARGE, TerminalError), (KafkaError.TOPIC_AUTHORIZATION_FAILED, TerminalError),
])
def test_kafka_errors(code, kind):
    e = KafkaException(KafkaError(code))
    translated = kafka.translate(e)
    assert isinstance(translated, kind) and translated.__cause__ is e


@pytest.mark.parametrize("error, kind", [
    (psycopg2.OperationalError("could not connect to server"), TransientError),
    (psycopg2.InterfaceError("connection already closed"), TransientError),
    (psycopg2.DataError("invalid input syntax for type integer"), TerminalError),
    (psycopg2.IntegrityError("duplicate key value"), TerminalError),
    (psycopg2.ProgrammingError("relation does not exist"), TerminalError),
])
def test_postgres_errors(error, kind):
    assert isinstance(postgres.translate(error), kind)


def test_what_is_neither_stays_as_it_is_and_poison_is_terminal():
    bug = KeyError("x")
    assert kafka.translate(bug) is bug and postgres.translate(bug) is bug
    assert isinstance(PoisonMessage("not JSON"), TerminalError) and isinstance(PoisonMessage("x"), ValueError)
    wrapped = TerminalError("Conversion Error: x")
    wrapped.__cause__ = ValueError("Conversion Error: could not convert\nLINE 1")
    assert cause(wrapped) == "Conversion Error: could not convert"
