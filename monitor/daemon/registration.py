"""The daemon's targets registered in the database (their configurations, after a check of the
schema): once per configuration, by one thread at a time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from monitor.daemon.prober import Prober
from monitor.domain import Settings
from monitor.errors import StoreError, StoreUnavailable
from monitor.store import db
from monitor.store.failures import Failure, classify

log = logging.getLogger("monitor")


class Registration:
    """Whether the current settings' targets are registered, and registering them.

    One thread registers; probe threads that waited for it take its outcome rather than
    register the same targets at once (the Recorder caches a new target's id before its
    transaction commits, so each would break another's foreign key)."""

    def __init__(self, prober: Prober, engine: Engine,
                 trouble: Callable[[BaseException], str]) -> None:
        self.prober = prober
        self.engine = engine
        self.trouble = trouble  # a database error, as a log line says it
        self.done = False  # set back to False when the settings change
        self._lock = threading.Lock()
        self._attempts = 0  # begun, so a thread that waited knows one ended meanwhile

    def ensure(self, current: Callable[[], Settings]) -> bool:
        """Register the `current()` settings' targets unless done; False while the database
        cannot take them. A configuration the database refuses for good is logged and skipped
        (that target's results are then quarantined) instead of holding up every target."""
        attempts = self._attempts
        with self._lock:
            if self.done or self._attempts != attempts:
                return self.done
            self._attempts += 1
            settings = current()
            try:
                db.check_schema(self.engine)
                for target in settings.targets:
                    try:
                        self.prober.register([target])
                    except SQLAlchemyError as exc:
                        if classify(exc) is not Failure.POISON:
                            raise
                        log.error("target %s cannot be registered: %s", target.name,
                                  self.trouble(exc))
            except (SQLAlchemyError, StoreUnavailable) as exc:
                log.warning("%s for registering targets", self.trouble(exc))
                return False
            except StoreError as error:
                log.error("%s; results wait in the spool", error)
                return False
            # Settings reloaded during the attempt: their new targets wait for the next call.
            self.done = settings is current()
            return True
