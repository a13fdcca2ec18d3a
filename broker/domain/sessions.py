"""Sessions: a client's keep-alive stream, to which it binds leases.

While keep-alives come, the session's leases are renewed with it. When the
client closes the session, its leases are released; when the stream breaks
(the client died) or keep-alives stop for the timeout (the client froze),
the broker holding the stream ends its leases as expired and its waiting
requests leave the queue. If that broker itself dies, the session's deadline
(kept in the database) passes unattended: any broker's sweep then ends the
session but leaves its leases to their own TTL, so a client that reconnects
to another broker and renews in time keeps them.
"""

from __future__ import annotations

import enum
import uuid

from broker.domain import races
from broker.domain.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PreconditionViolation,
)
from broker.domain.leasing import Leases
from broker.domain.values import LeaseState, SessionState, SessionView
from broker.models import session as session_model
from broker.models.transactions import writes

MIN_KEEPALIVE_TIMEOUT = 1.0
# A broker attending a session ends it within moments of its deadline; one
# that finds the deadline passed longer ago than this was not attending it.
UNATTENDED_AFTER = 1.0
MAX_HOLDER = 128


class SessionEnding(enum.Enum):
    """How a session's stream ended, as its broker saw it."""

    CLOSED = "closed by its client"
    BROKEN = "its client's stream broke"
    SILENT = "its keep-alives stopped"


class Sessions:
    """Open, keep alive and end sessions."""

    def __init__(
        self,
        leases: Leases,
        *,
        keepalive_timeout: float,
        max_keepalive_timeout: float,
    ):
        self.leases = leases
        self.keepalive_timeout = keepalive_timeout
        self.max_keepalive_timeout = max_keepalive_timeout

    @writes
    def open(self, holder: str, keepalive_timeout: float | None) -> SessionView:
        timeout = self.keepalive_timeout if keepalive_timeout is None else keepalive_timeout
        if not MIN_KEEPALIVE_TIMEOUT <= timeout <= self.max_keepalive_timeout:
            raise InvalidArgumentError.of(
                "keepalive_timeout",
                f"must be {MIN_KEEPALIVE_TIMEOUT:g} s to {self.max_keepalive_timeout:g} s, "
                f"not {timeout:g} s",
            )
        if len(holder) > MAX_HOLDER:
            raise InvalidArgumentError.of("holder", f"is longer than {MAX_HOLDER} characters")
        session_id = str(uuid.uuid4())
        with self.leases.transaction(kinds=()) as now:
            session_model.Session.insert(
                id=session_id,
                holder=holder,
                keepalive_timeout=timeout,
                state=int(SessionState.OPEN),
                create_time=now,
                expire_time=now + timeout,
            ).execute()
        return SessionView(session_id, holder, timeout, now + timeout)

    @races.retried
    @writes
    def keep_alive(self, session_id: str) -> SessionView:
        """Pushes the session's deadline and renews its leases, locking only
        their rows; a session that already ended is FAILED_PRECONDITION."""
        with self.leases.transaction(kinds=()) as now:
            session = self._open_session(session_id, now)
            if session is not None:
                expire_time = now + session.keepalive_timeout
                session_model.keep_alive(session_id, expire_time, now, LeaseState.ACTIVE)
        if session is None:
            raise FailedPreconditionError(
                PreconditionViolation(
                    "SESSION_ENDED", f"sessions/{session_id}", f"session {session_id} has ended"
                )
            )
        return SessionView(session_id, session.holder, session.keepalive_timeout, expire_time)

    @writes
    def close(self, session_id: str, ending: SessionEnding) -> None:
        """Ends a session: when its client closed it its leases are released;
        when its stream broke or went silent they expire."""
        with self.leases.transaction() as now:
            session = self._open_session(session_id, now, ending != SessionEnding.CLOSED)
            if session is not None:
                clean = ending == SessionEnding.CLOSED
                state = SessionState.CLOSED if clean else SessionState.EXPIRED
                self.leases.endings.end_session(session, state, now, ending.value)

    def _open_session(
        self, session_id: str, now: float, unattended: bool = True
    ) -> session_model.Session | None:
        """The session if it is still open; one past its deadline is ended
        here (in the caller's transaction) and None returned. Its leases
        expire with it, unless the deadline passed long before (and
        `unattended` applies: the client did not close it itself)."""
        session = session_model.lock_session(session_id)
        if session is None:
            raise NotFoundError("session", session_id)
        if session.state != SessionState.OPEN:
            return None
        if session.expire_time <= now:
            if unattended and now - session.expire_time > UNATTENDED_AFTER:
                # Its broker was away (frozen, cut off) when the deadline
                # passed: the client may have renewed its leases through
                # another broker meanwhile, so they keep their own TTL.
                self.leases.endings.orphan_session(session, now)
            else:
                self.leases.endings.end_session(
                    session, SessionState.EXPIRED, now, "its keep-alives stopped"
                )
            return None
        return session
