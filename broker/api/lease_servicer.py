"""`broker.v1.LeaseService`: each method converts in, makes one domain call,
converts out. Validation and errors are the interceptor's; waiting for a
grant is the `WaitBoard`'s."""

from __future__ import annotations

import asyncio
import contextlib

from broker.api import convert, identity
from broker.api.runner import Runner
from broker.api.waits import WaitBoard
from broker.domain.errors import FailedPreconditionError, PreconditionViolation
from broker.domain.leasing import Leases
from broker.domain.sessions import SessionEnding, Sessions
from broker.domain.values import Granted, Waiting
from broker.v1 import lease_service_pb2 as pb
from broker.v1 import lease_service_pb2_grpc


class LeaseServicer(lease_service_pb2_grpc.LeaseServiceServicer):
    def __init__(self, leases: Leases, sessions: Sessions, board: WaitBoard, run: Runner):
        self.leases = leases
        self.sessions = sessions
        self.board = board
        self.run = run
        self._background: set[asyncio.Future] = set()

    async def AcquireLease(self, request, context):
        outcome = await self._acquire(request, context)
        if isinstance(outcome, Granted):
            return convert.granted_to_proto(outcome)
        # Closed as the call ends, so the board forgets it at once.
        async with contextlib.aclosing(self.board.follow(outcome, stream=False)) as following:
            del outcome  # the board keeps what the wait needs
            async for status in following:
                if isinstance(status, Granted):
                    return convert.granted_to_proto(status)
        raise AssertionError("the wait ends with a grant or an error")

    async def WatchAcquireLease(self, request, context):
        outcome = await self._acquire(request.request, context)
        if isinstance(outcome, Granted):
            yield pb.WatchAcquireLeaseResponse(granted=convert.granted_to_proto(outcome))
            return
        yield pb.WatchAcquireLeaseResponse(waiting=convert.queue_status_to_proto(outcome))
        async with contextlib.aclosing(self.board.follow(outcome, stream=True)) as following:
            del outcome
            async for status in following:
                if isinstance(status, Granted):
                    yield pb.WatchAcquireLeaseResponse(granted=convert.granted_to_proto(status))
                else:
                    yield pb.WatchAcquireLeaseResponse(
                        waiting=convert.queue_status_to_proto(status)
                    )

    async def _acquire(self, request, context) -> Granted | Waiting:
        """The first outcome of an acquire: the grant, or its place in the
        queue (the board then follows the wait)."""
        asked = convert.acquire_request(
            request,
            identity.holder(request.holder, context),
            identity.principal_name(request.holder, context),
            identity.verified() is not None,
            identity.visible_groups(),
        )
        acquiring = asyncio.ensure_future(self.run(self.leases.acquire, asked))
        try:
            return await asyncio.shield(acquiring)
        except asyncio.CancelledError:
            # The caller left while the acquire was under way: whatever it
            # leaves behind (a wait, a fresh lease) is undone once it ends.
            self._keep(acquiring)
            acquiring.add_done_callback(self._undo_acquire)
            raise

    def _undo_acquire(self, acquiring: asyncio.Future) -> None:
        if acquiring.cancelled() or acquiring.exception() is not None:
            return
        outcome = acquiring.result()
        if isinstance(outcome, Granted):
            undo = self.run(self.leases.release, outcome.lease.lease_id, outcome.secret)
        else:
            undo = self.run(self.leases.abandon, outcome.waiter_id, False)
        self._keep(asyncio.ensure_future(undo))

    async def drain(self, timeout: float) -> None:
        """Waits, up to `timeout` seconds, for the work that ended calls
        left in the background (undoing an acquire, closing a session)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)

    def _keep(self, future: asyncio.Future) -> None:
        """Holds a background future until it is done."""
        self._background.add(future)
        future.add_done_callback(self._background.discard)

    async def ListWaiters(self, request, context):
        page = await self.run(self.leases.list_waiters, request.page_size, request.page_token)
        return pb.ListWaitersResponse(
            waiters=[convert.waiter_to_proto(view) for view in page.items],
            next_page_token=page.next_page_token,
        )

    async def OpenSession(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        timeout = (
            convert.seconds_of(first.keepalive_timeout)
            if first.HasField("keepalive_timeout")
            else None
        )
        session = await self.run(
            self.sessions.open, identity.principal_name(first.holder, context), timeout
        )
        yield convert.session_to_proto(session)
        ending = SessionEnding.BROKEN
        messages = aiter(request_iterator)
        try:
            while True:
                try:
                    # Not `wait_for`, which on Python 3.11 can swallow the
                    # cancel of a broken stream that comes as a message does.
                    async with asyncio.timeout(session.keepalive_timeout):
                        message = await anext(messages)
                except TimeoutError:
                    ending = SessionEnding.SILENT
                    break
                except StopAsyncIteration:
                    break
                if message.close:
                    ending = SessionEnding.CLOSED
                    break
                session = await self.run(self.sessions.keep_alive, session.session_id)
                yield convert.session_to_proto(session)
        finally:
            # A broken stream cancels this call: the ending must not be
            # cancelled with it.
            closing = asyncio.ensure_future(
                self.run(self.sessions.close, session.session_id, ending)
            )
            self._keep(closing)
            await asyncio.shield(closing)
        if ending == SessionEnding.SILENT:
            raise FailedPreconditionError(
                PreconditionViolation(
                    "SESSION_ENDED",
                    f"sessions/{session.session_id}",
                    f"session {session.session_id} ended: {ending.value}",
                )
            )

    async def RenewLease(self, request, context):
        view = await self.run(
            self.leases.renew, request.lease_id, request.secret, identity.acting_principal()
        )
        return pb.RenewLeaseResponse(lease=convert.lease_to_proto(view))

    async def ReleaseLease(self, request, context):
        view = await self.run(
            self.leases.release, request.lease_id, request.secret, identity.acting_principal()
        )
        return pb.ReleaseLeaseResponse(lease=convert.lease_to_proto(view))

    async def ReleaseResources(self, request, context):
        view = await self.run(
            self.leases.release_resources,
            request.lease_id,
            request.secret,
            list(request.resources),
            identity.acting_principal(),
        )
        return pb.ReleaseResourcesResponse(lease=convert.lease_to_proto(view))

    async def GetLease(self, request, context):
        view = await self.run(self.leases.get, request.lease_id, identity.visible_groups())
        return pb.GetLeaseResponse(lease=convert.lease_to_proto(view))

    async def ListLeases(self, request, context):
        page = await self.run(
            self.leases.list,
            convert.lease_state(request.state),
            request.holder,
            request.resource,
            request.page_size,
            request.page_token,
            request.principal,
            identity.visible_groups(),
        )
        return pb.ListLeasesResponse(
            leases=[convert.lease_to_proto(view) for view in page.items],
            next_page_token=page.next_page_token,
        )

    async def RevokeLease(self, request, context):
        view = await self.run(
            self.leases.revoke, request.lease_id, request.reason, identity.caller(context)
        )
        return pb.RevokeLeaseResponse(lease=convert.lease_to_proto(view))

    async def ReportSetup(self, request, context):
        report = await self.run(
            self.leases.report_setup,
            request.lease_id,
            request.secret,
            request.resource,
            request.ok,
            request.error,
            identity.acting_principal(),
        )
        return pb.ReportSetupResponse(
            setup_failures=report.setup_failures, quarantined=report.quarantined
        )
