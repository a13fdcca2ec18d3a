"""The calculator device: an RPyC service that evaluates arithmetic, and
refuses a holder whose lease was superseded.

Clients call `root.fence(token, resource)` with their grant's fencing number
and the resource's name before anything else. The server remembers, for each
resource it serves, the highest number any connection has fenced with; a
connection whose number is lower than that belongs to a holder whose lease
ended and was granted to someone newer, so its calls are refused with
`PermissionError` even if it still thinks it holds the device. One device can
so serve several resources of the inventory, each fenced on its own (their
numbers are independent); `fence(token)` alone fences the unnamed one.

Only arithmetic is evaluated (numbers, + - * / // % **, unary + and -,
parentheses), from the expression's syntax tree, never `eval`; bounds on the
expression's length and on powers keep one request from hanging the device.
The service is never run in classic mode: clients reach only `exposed_`
methods.
"""

from __future__ import annotations

import argparse
import ast
import errno
import operator
import signal
import threading
from collections.abc import Callable
from types import FrameType

import rpyc
from rpyc.lib import spawn_waitready
from rpyc.utils.helpers import classpartial
from rpyc.utils.server import ThreadedServer

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1357
MAX_EXPRESSION_LENGTH = 500
MAX_EXPONENT = 1000
MAX_INTEGER_BITS = 4096

Number = int | float

BINARY_OPERATORS: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
UNARY_OPERATORS: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression; ValueError names what is not
    allowed in it. Division by zero raises ZeroDivisionError."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ValueError(f"the expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as error:
        raise ValueError(f"not an arithmetic expression: {error.msg}") from None
    try:
        return _evaluate(tree.body)
    except OverflowError:
        raise ValueError("the result is out of range") from None


def _evaluate(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY_OPERATORS:
        return _bounded(UNARY_OPERATORS[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY_OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _bounded(BINARY_OPERATORS[type(node.op)](left, right))
    raise ValueError(
        f"{_describe(node)} is not allowed: only numbers, + - * / // % **, and parentheses are"
    )


def _describe(node: ast.expr) -> str:
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        return f"the operator {type(node.op).__name__} in {ast.unparse(node)!r}"
    return f"{type(node).__name__.lower()} {ast.unparse(node)!r}"


def _check_power(base: Number, exponent: Number) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise ValueError(f"exponents are at most {MAX_EXPONENT} in magnitude, not {exponent}")
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and base.bit_length() * exponent > MAX_INTEGER_BITS
    ):
        raise ValueError(f"the power has more than {MAX_INTEGER_BITS} bits")


def _bounded(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INTEGER_BITS:
        raise ValueError(f"the result has more than {MAX_INTEGER_BITS} bits")
    return value


def _refused(reason: str) -> PermissionError:
    # With an errno, the reason survives the trip through RPyC in `strerror`
    # and in the message; RPyC rebuilds a one-argument OSError unreadably.
    return PermissionError(errno.EACCES, reason)


class FenceRegister:
    """The highest fencing number any connection to one server has presented,
    for each resource it serves; shared by all of that server's connections."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._highest: dict[str, int] = {}

    def highest(self, resource: str = "") -> int:
        with self._lock:
            return self._highest.get(resource, 0)

    def fence(self, token: int, resource: str = "") -> None:
        """Accepts `token` for `resource` unless a newer holder of it already
        fenced with a higher one."""
        with self._lock:
            highest = self._highest.get(resource, 0)
            if token < highest:
                raise _refused(_stale(token, highest, resource))
            self._highest[resource] = token


def _stale(token: int, highest: int, resource: str) -> str:
    of = f" of {resource!r}" if resource else ""
    return f"fencing token {token} is stale: a holder{of} with {highest} came since"


class CalculatorService(rpyc.Service):
    """One connection's view of the calculator.

    Args:
        register: the fencing register of the server this connection belongs to.

    Extend it by adding `exposed_` methods that start with `self._check_fence()`.
    """

    def __init__(self, register: FenceRegister) -> None:
        self._register = register

    def on_connect(self, conn: rpyc.Connection) -> None:
        self._token: int | None = None
        self._resource = ""

    def exposed_fence(self, token: int, resource: str = "") -> None:
        """Presents this connection's fencing number for `resource` (the
        resource's name in the inventory); required before any call."""
        token, resource = int(token), str(resource)
        self._register.fence(token, resource)
        self._token, self._resource = token, resource

    def exposed_calculate(self, expression: str) -> Number:
        self._check_fence()
        return evaluate(str(expression))

    def _check_fence(self) -> None:
        if self._token is None:
            raise _refused("call fence(token) with the lease's fencing token first")
        highest = self._register.highest(self._resource)
        if self._token < highest:
            raise _refused(_stale(self._token, highest, self._resource))


def build_server(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> ThreadedServer:
    """A server, bound but not listening yet, whose connections share one
    `FenceRegister`."""
    return ThreadedServer(
        classpartial(CalculatorService, FenceRegister()), hostname=host, port=port
    )


def start_in_thread(host: str = DEFAULT_HOST, port: int = 0) -> tuple[ThreadedServer, int]:
    """Serves in a daemon thread; returns once it listens, with the bound
    port. `server.close()` stops it."""
    server = build_server(host, port)
    _serve_in_thread(server)
    return server, server.port


def _serve_in_thread(server: ThreadedServer) -> threading.Thread:
    # The thread runs RPyC's readiness step `_listen` (as its own
    # `_start_in_thread` does) before `start`; we return once it has run.
    thread, _ = spawn_waitready(server._listen, server.start)
    return thread


def main(argv: list[str] | None = None) -> int:
    """The `calculator-device` command: serves until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (%(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (%(default)s)")
    args = parser.parse_args(argv)
    server = build_server(args.host, args.port)
    thread = _serve_in_thread(server)

    def stop(signum: int, frame: FrameType | None) -> None:
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"calculator listening on {args.host}:{server.port}", flush=True)
    thread.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
