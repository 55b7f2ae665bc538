"""Matching every write against the active Subscriptions (a change hook of the FHIR core).

Runs once per transaction, before its commit, with the versions the transaction wrote:

1. Subscriptions written in the transaction update the route table (``subscription_route``):
   an active one gets a row with the type its criteria search, anything else loses its row.
2. For each type written, one indexed query finds the routes of that type; for each route
   the criteria, compiled by the search, run against just the ids written (one query per
   route, whatever the number of resources), with the access policy of the Subscription's
   owner: a hospital is notified only of what it may read. A version matches when it is still
   the stored one (a batch entry rolled back on its savepoint is not).
3. Each match becomes one outbox message in the same transaction: the write and the
   notification it owes commit together or not at all. The message id is derived from
   (Subscription, resource, version), so it is the idempotency key the receiver sees.

Deletions trigger nothing: a deleted resource no longer matches any search.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, or_, select
from sqlalchemy.orm import Session

from emr_hub.errors import FhirError
from emr_hub.fhir.search.compile import Compiler
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.outbox import add_message
from emr_hub.security.access import hospital_access
from emr_hub.subscriptions.criteria import parse_criteria
from storage.tables import SubscriptionRoute

log = logging.getLogger(__name__)

TOPIC = "subscription.notify"
ROUTE = SubscriptionRoute.__table__
EVENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:emr-hub:subscription-event")
CHUNK = 500


def match_changes(store: FhirStore, changes: list[Stored]) -> None:
    subscription_ids = {c.id for c in changes if c.resource_type == "Subscription"}
    if subscription_ids:
        _sync_routes(store, subscription_ids)
    written: dict[str, dict[str, int]] = defaultdict(dict)
    for change in changes:
        if not change.deleted:
            written[change.resource_type][change.id] = change.version_id
    if not written:
        return
    routes = store.session.execute(
        select(
            ROUTE.c.subscription_id, ROUTE.c.resource_type, ROUTE.c.criteria, ROUTE.c.owner_org
        ).where(
            ROUTE.c.resource_type.in_(sorted(written)),
            or_(ROUTE.c.ends_at.is_(None), ROUTE.c.ends_at > store.moment),
        )
    ).all()
    dialect = store.session.get_bind().dialect.name
    for subscription_id, resource_type, criteria, owner in routes:
        access = hospital_access(owner, store.moment)
        visibility = None if access is None else access.visible
        compiler = Compiler(store.base_url, dialect, visibility=visibility)
        params = {} if access is None else access.params()
        for resource_id, version in _matches(
            store.session, compiler, subscription_id, criteria, written[resource_type], params
        ):
            notify(store.session, subscription_id, f"{resource_type}/{resource_id}", version)


def notify(session: Session, subscription_id: str, focus: str, version: int) -> str:
    """Queue the notification of ``focus`` at ``version`` for one Subscription."""
    key = str(uuid.uuid5(EVENT_NAMESPACE, f"{subscription_id}|{focus}|{version}"))
    payload = {"subscription": subscription_id, "focus": focus, "version": version}
    subject = f"Subscription/{subscription_id}"
    return add_message(
        session, TOPIC, payload, key=key, subject=subject, sequence=(f"{subject}|{focus}", version)
    )


def _matches(
    session: Session,
    compiler: Compiler,
    subscription_id: str,
    criteria: str,
    versions: dict[str, int],
    params: dict[str, Any],
) -> list[tuple[str, int]]:
    try:
        request = parse_criteria(criteria).request
        base = compiler.select_ids(request)
    except FhirError:
        # The criteria were valid when stored; the search definitions changed since.
        log.warning("Subscription/%s has criteria the hub no longer understands", subscription_id)
        return []
    resource_id = base.selected_columns[0]
    resource = resource_id.table  # the compiler's alias of the resource table
    ids = sorted(versions)
    found: list[tuple[str, int]] = []
    for start in range(0, len(ids), CHUNK):
        query = base.where(resource_id.in_(ids[start : start + CHUNK])).add_columns(
            resource.c.version_id  # type: ignore[attr-defined]
        )
        found += [(rid, v) for rid, v in session.execute(query, params) if versions.get(rid) == v]
    return found


def _sync_routes(store: FhirStore, subscription_ids: set[str]) -> None:
    """Make the route rows of these Subscriptions match what is stored now."""
    session = store.session
    session.execute(delete(ROUTE).where(ROUTE.c.subscription_id.in_(sorted(subscription_ids))))
    rows: list[dict[str, Any]] = []
    written = (("Subscription", i) for i in sorted(subscription_ids))
    for stored in store.load_many(written, checked=False):
        content = stored.content or {}
        if content.get("status") != "active":
            continue
        criteria = parse_criteria(str(content.get("criteria", "")))
        rows.append(
            {
                "subscription_id": stored.id,
                "resource_type": criteria.resource_type,
                "criteria": content["criteria"],
                "ends_at": _instant(content.get("end")),
                "owner_org": stored.owner,
            }
        )
    if rows:
        session.execute(insert(ROUTE), rows)


def _instant(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
