"""Renews a lease in the background for as long as it is held.

A lease lives for its TTL and then expires, so a holder renews it every third
of the TTL: two renewals can fail transiently (the broker restarting, a
network blip) before the lease is in danger. A renewal the broker refuses for
good (the lease expired, was revoked, or is not ours), or a renewed lease
that is not active (`LeaseNotActiveError`), marks the lease lost, so that the
test holding it can notice it no longer owns its resources. A client given
several brokers renews through whichever answers (`BrokerClient.renew` moves
on from one that stopped answering), so the lease outlives its broker.

A lease has a maximum lifetime when the broker sets one
(`Lease.max_expire_time`): once a renewal reaches it, renewing stops and the
lease ends then; it is not lost before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from broker.v1 import lease_pb2
from sdk.errors import (
    BrokerError,
    FailedPreconditionError,
    NotFoundError,
    PermissionDeniedError,
    reason_of,
)

if TYPE_CHECKING:
    from sdk.client import BrokerClient

logger = logging.getLogger(__name__)

# The broker refuses these renewals for good: the lease has ended.
ENDED = (FailedPreconditionError, NotFoundError, PermissionDeniedError)
# The broker's reason for a renewal refused at the lease's maximum lifetime.
MAX_LIFETIME = "MAX_LIFETIME"


def at_max_lifetime(lease: lease_pb2.Lease) -> bool:
    """Whether renewing `lease` can extend it no further."""
    return lease.HasField("max_expire_time") and (
        lease.expire_time.ToNanoseconds() >= lease.max_expire_time.ToNanoseconds()
    )


class KeepAlive:
    """A daemon thread renewing one lease every `interval` seconds.

    Args:
        client: the client to renew through.
        lease_id, secret: the lease and its credential.
        interval: seconds between renewals, a third of the lease's TTL.
        lost: set when the broker says the lease has ended.
        on_renew: called with each renewed lease, e.g. to track `expire_time`.
    """

    def __init__(
        self,
        client: BrokerClient,
        lease_id: str,
        secret: str,
        *,
        interval: float,
        lost: threading.Event,
        on_renew: Callable[[lease_pb2.Lease], None] | None = None,
    ) -> None:
        self._client = client
        self._lease_id = lease_id
        self._secret = secret
        self._interval = interval
        self._lost = lost
        self._on_renew = on_renew
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"keepalive-{lease_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stops renewing at once (a renewal in flight finishes first)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                lease = self._client.renew(self._lease_id, self._secret)
            except ENDED as error:
                if reason_of(error) == MAX_LIFETIME:
                    logger.warning("lease %s is not renewed any more: %s", self._lease_id, error)
                    return
                logger.error("lease %s is lost: %s", self._lease_id, error)
                self._lost.set()
                return
            except BrokerError as error:
                logger.warning("renewing lease %s failed, retrying: %s", self._lease_id, error)
                continue
            if self._on_renew is not None:
                self._on_renew(lease)
            if at_max_lifetime(lease):
                logger.warning(
                    "lease %s reached its maximum lifetime: it ends at %s unless released",
                    self._lease_id,
                    lease.max_expire_time.ToJsonString(),
                )
                return
