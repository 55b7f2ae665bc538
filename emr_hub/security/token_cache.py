"""Access tokens this API process has verified, kept so the next request with the same token
costs a dictionary lookup instead of a signature check and a database round trip.

Verifying a token (:func:`emr_hub.security.tokens.verify_access_token`) checks its ES256
signature and claims and looks the client's registration up, so that disabling or
re-registering a client cuts its tokens off at once. Kept tokens must not weaken that, so:

* Only on PostgreSQL, where a trigger (migration 0009) announces every change to the
  ``api_client`` table on the ``emr_hub_api_client`` channel, whichever process or statement
  made it. One thread per process listens; each announcement drops every kept token, so a
  disabled client's next request is verified afresh (and refused) within the moment the
  announcement takes to arrive. Changes this process commits through the ORM drop them
  synchronously, before the commit returns.
* Only while the listener is connected: when its connection is lost, everything kept is
  dropped and nothing is kept until it has listened again (tokens are then verified in full,
  as on SQLite, which has no notifications and keeps nothing).
* A token verified while an announcement arrived is not kept (its client row may predate the
  change): every entry records the change counter it was verified under.
* On every use the entry's expiry and its signing key (still published, not retired) are
  checked again; the per-request facts (acting practitioner, purpose of use) are never kept.

At most ``MAX_ENTRIES`` tokens are kept (the oldest dropped first); only tokens that
verified are kept, so a flood of forged ones cannot fill it.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from joserfc.jws import extract_compact
from sqlalchemy import event
from sqlalchemy.orm import Session

from emr_hub.security.keys import verification_key
from emr_hub.security.tokens import LEEWAY_SECONDS, verify_access_token
from storage.tables import ApiClient

if TYPE_CHECKING:
    from emr_hub.hub import Hub
    from emr_hub.security.principal import Principal

log = logging.getLogger(__name__)

CHANNEL = "emr_hub_api_client"
MAX_ENTRIES = 10_000
RECONNECT_SECONDS = (0.5, 1, 2, 5, 10)
STOP_CHECK_SECONDS = 0.25
LISTENER = "emr-hub client changes"  # its application_name in pg_stat_activity
_CLIENT_ROWS = "emr_hub.client_rows_changed"


@dataclass(frozen=True)
class _Kept:
    principal: Principal
    expires: float
    kid: str


class TokenCache:
    """The verified tokens of one hub in this process (``hub.token_cache``)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._entries: OrderedDict[str, _Kept] = OrderedDict()
        self._lock = threading.Lock()
        self._changes = 0
        self._changed = threading.Condition(self._lock)
        self._listening = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if hub.db.dialect == "postgresql":
            self._thread = threading.Thread(
                target=self._listen, name="emr-hub-client-changes", daemon=True
            )
            self._thread.start()
        _CACHES.add(self)

    # ------------------------------------------------------------------ requests
    def verify(self, token: str) -> Principal:
        """The principal of ``token``, from what is kept or verified in full (401 if invalid)."""
        principal = self.cached(token)
        if principal is not None:
            return principal
        with self._lock:
            seen = self._changes
        principal = verify_access_token(self.hub, token)
        self._keep(token, principal, seen)
        return principal

    def cached(self, token: str) -> Principal | None:
        """The kept principal of ``token`` if it may still be used, else None (pure: for the
        event loop, which must not wait on the database)."""
        kept = self._entries.get(token)
        return kept.principal if kept is not None and self._usable(kept) else None

    def _usable(self, kept: _Kept) -> bool:
        return kept.expires > time.time() - LEEWAY_SECONDS and (
            verification_key(self.hub, kept.kid) is not None
        )

    def _keep(self, token: str, principal: Principal, seen: int) -> None:
        expires, kid = _expiry_and_kid(token)
        if expires is None or kid is None:
            return
        with self._lock:
            if not self._listening or self._changes != seen:
                return
            self._entries[token] = _Kept(principal, expires, kid)
            self._entries.move_to_end(token)
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)

    # ------------------------------------------------------------------ changes
    @property
    def changes(self) -> int:
        """How many client changes (or listener reconnections) this cache has seen."""
        with self._lock:
            return self._changes

    def forget(self) -> None:
        """Drop everything kept: a client changed (or may have)."""
        with self._lock:
            self._changes += 1
            self._entries.clear()
            self._changed.notify_all()

    def wait_for_change(self, after: int, timeout: float) -> bool:
        """Wait until a change after count ``after`` has been seen (for tests and tools that
        change a client elsewhere and need this process to have heard of it)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._changes > after, timeout)

    @property
    def listening(self) -> bool:
        with self._lock:
            return self._listening

    def wait_listening(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._listening, timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _set_listening(self, listening: bool) -> None:
        with self._lock:
            self._listening = listening
            self._changes += 1
            self._entries.clear()
            self._changed.notify_all()

    def _listen(self) -> None:
        import psycopg

        url = self.hub.db.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True, application_name=LISTENER) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._set_listening(True)
                    failures = 0
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=STOP_CHECK_SECONDS):
                            self.forget()
            except Exception as exc:  # noqa: BLE001 - any loss: keep nothing, listen again
                log.warning("client change listener lost its connection: %s", type(exc).__name__)
            self._set_listening(False)
            pause = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
            failures += 1
            self._stop.wait(pause)


def _expiry_and_kid(token: str) -> tuple[float | None, str | None]:
    """The ``exp`` claim and ``kid`` header of a token that has just verified."""
    compact = extract_compact(token.encode("ascii"))
    claims: Any = orjson.loads(compact.payload)
    expires, kid = claims.get("exp"), compact.headers().get("kid")
    return (
        float(expires) if isinstance(expires, int | float) else None,
        kid if isinstance(kid, str) else None,
    )


# Changes this process commits through the ORM drop the kept tokens before the commit returns,
# without waiting for the announcement.
_CACHES: weakref.WeakSet[TokenCache] = weakref.WeakSet()


@event.listens_for(Session, "after_flush")
def _note_client_rows(session: Session, _context: Any) -> None:
    if any(isinstance(row, ApiClient) for row in (*session.new, *session.dirty, *session.deleted)):
        session.info[_CLIENT_ROWS] = True


@event.listens_for(Session, "after_commit")
def _forget_on_commit(session: Session) -> None:
    if session.info.pop(_CLIENT_ROWS, False):
        for cache in list(_CACHES):
            cache.forget()


@event.listens_for(Session, "after_rollback")
def _keep_on_rollback(session: Session) -> None:
    session.info.pop(_CLIENT_ROWS, None)
