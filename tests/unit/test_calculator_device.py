"""The calculator device through real RPyC connections to a server on a
loopback port: its arithmetic, what it refuses, and fencing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import rpyc

from resources.calculator.device import FenceRegister, evaluate, start_in_thread


@pytest.fixture
def port() -> Iterator[int]:
    server, port = start_in_thread()
    yield port
    server.close()


@pytest.fixture
def connect(port: int) -> Iterator:
    connections: list[rpyc.Connection] = []

    def connect() -> rpyc.Connection:
        connection = rpyc.connect("127.0.0.1", port, config={"sync_request_timeout": 10})
        connections.append(connection)
        return connection

    yield connect
    for connection in connections:
        connection.close()


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 % 3", 2),
        ("2 ** 10", 1024),
        ("2 ** -1", 0.5),
        ("-(+3)", -3),
        ("1.5 * 4", 6.0),
    ],
)
def test_arithmetic(connect, expression: str, expected: float) -> None:
    calculator = connect()
    calculator.root.fence(1)
    assert calculator.root.calculate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "named"),
    [
        ("x + 1", "name 'x'"),
        ("__import__('os')", "call"),
        ("(1).real", "attribute"),
        ("'a' * 3", "constant"),
        ("1 if 1 else 2", "ifexp"),
        ("1 << 2", "LShift"),
        ("1 < 2", "compare"),
        ("2 ** 10 ** 10", "exponents are at most"),
        ("(2 ** 1000) ** 100", "the power has more than"),
        (" * ".join(["2 ** 1000"] * 5), "the result has more than"),
        ("10.0 ** 999", "out of range"),
        ("1 +", "not an arithmetic expression"),
        ("1" * 501, "longer than"),
    ],
)
def test_refused_expressions(expression: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        evaluate(expression)


def test_refusal_crosses_rpyc(connect) -> None:
    calculator = connect()
    calculator.root.fence(1)
    with pytest.raises(ValueError, match='call "open'):
        calculator.root.calculate("open('/etc/passwd')")


def test_division_by_zero_is_an_arithmetic_error() -> None:
    with pytest.raises(ZeroDivisionError):
        evaluate("1 / 0")


def test_calculate_needs_fence(connect) -> None:
    with pytest.raises(PermissionError, match="fence"):
        connect().root.calculate("1 + 1")


def test_lower_token_is_refused(connect) -> None:
    connect().root.fence(5)
    with pytest.raises(PermissionError, match="fencing token 4 is stale: a holder with 5"):
        connect().root.fence(4)


def test_same_token_may_reconnect(connect) -> None:
    connect().root.fence(5)
    again = connect()
    again.root.fence(5)
    assert again.root.calculate("2 + 2") == 4


def test_newer_holder_locks_out_the_old_one(connect) -> None:
    old, new = connect(), connect()
    old.root.fence(3)
    assert old.root.calculate("1 + 1") == 2
    new.root.fence(4)
    with pytest.raises(PermissionError, match="fencing token 3 is stale: a holder with 4"):
        old.root.calculate("1 + 1")
    assert new.root.calculate("1 + 1") == 2


def test_servers_fence_independently(connect) -> None:
    connect().root.fence(100)
    server, port = start_in_thread()
    try:
        other = rpyc.connect("127.0.0.1", port)
        try:
            other.root.fence(1)
            assert other.root.calculate("3 * 3") == 9
        finally:
            other.close()
    finally:
        server.close()


def test_register_keeps_the_highest() -> None:
    register = FenceRegister()
    register.fence(2)
    register.fence(7)
    with pytest.raises(PermissionError):
        register.fence(6)
    assert register.highest() == 7


def test_each_resource_of_one_device_is_fenced_on_its_own(connect) -> None:
    first, second, stale = connect(), connect(), connect()
    first.root.fence(9, "calc1")
    second.root.fence(2, "calc2")
    assert first.root.calculate("1 + 1") == 2
    assert second.root.calculate("2 + 2") == 4
    second.root.fence(3, "calc2")
    with pytest.raises(PermissionError, match="fencing token 8 is stale: a holder of 'calc1'"):
        stale.root.fence(8, "calc1")
    assert first.root.calculate("3 + 3") == 6
