"""The sweep that frees leases whose TTL ran out, so that listings and events
show them ended promptly even when nobody acquires."""

from __future__ import annotations

import logging
import threading

from broker.domain.leasing import Leases
from broker.models.database import database_proxy

log = logging.getLogger(__name__)


class Reaper:
    """Runs `Leases.expire_due` every `interval` seconds on its own thread."""

    def __init__(self, leases: Leases, interval: float):
        self.leases = leases
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        database = database_proxy.obj
        try:
            while not self._stop.wait(self.interval):
                try:
                    database.connect(reuse_if_open=True)
                    expired = self.leases.expire_due()
                    if expired:
                        log.info("expired %d lease(s) whose TTL ran out", expired)
                except Exception:
                    log.exception("lease expiry sweep failed; retrying in %.1f s", self.interval)
        finally:
            if not database.is_closed():
                database.close()
