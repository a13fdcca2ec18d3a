"""The most calls the broker serves at once.

Every waiting acquire and open session is a call in progress. Past the
limit a new call is refused at once, with RESOURCE_EXHAUSTED naming the
setting, instead of being queued inside gRPC without bound (where, past its
own backlog, gRPC cancels calls at random). Health and reflection calls do
not count, so a full broker still answers its probes.
"""

from __future__ import annotations

from broker.domain.errors import LimitExceededError

SETTING = "server.max_concurrent_rpcs"


class CallLimit:
    """Counts the calls running on the event loop (so needs no lock); a
    plain pair of calls, not a context manager, since every waiting call
    would hold one."""

    def __init__(self, most: int):
        self.most = most
        self.running = 0

    def enter(self) -> None:
        """Takes one call's place; `leave()` gives it back."""
        if self.running >= self.most:
            raise LimitExceededError(
                SETTING,
                f"the broker is serving as many calls at once as it may ({self.most}, "
                f"{SETTING}); retry later, or raise {SETTING}",
            )
        self.running += 1

    def leave(self) -> None:
        self.running -= 1
