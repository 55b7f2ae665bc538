"""Sending a notification: the outbox handler of topic ``subscription.notify``.

R4 rest-hook semantics (FHIR R4, Subscription, "rest-hook" channel):

* no ``channel.payload``: an empty ``POST`` to ``channel.endpoint``;
* ``channel.payload`` ``application/fhir+json``: the endpoint is a FHIR base and the matching
  version of the resource is sent as ``PUT {endpoint}/{type}/{id}``.

Every request carries the ``channel.header`` items, ``Idempotency-Key`` (the outbox message id,
the same on every retry, so the receiver can drop a repeat), ``X-Emr-Hub-Subscription``
(``Subscription/<id>``) and ``X-Emr-Hub-Focus`` (``<type>/<id>/_history/<version>``).

The Subscription is read when the message is delivered, not when it was queued: a changed
endpoint or headers apply to notifications still pending, a Subscription switched off or
deleted fails them (kept in the delivery log), and the endpoint's host is checked again
against the allow-list of the delivering process.
"""

from __future__ import annotations

from typing import Any

from emr_hub.fhir.store import FhirStore
from emr_hub.hub import Hub
from emr_hub.outbox import PermanentDeliveryError, handler, send_http
from emr_hub.subscriptions.hosts import AllowList, endpoint_problem
from emr_hub.subscriptions.matching import TOPIC
from emr_hub.subscriptions.rules import FHIR_JSON, headers_of, payload_type
from storage import json_codec


@handler(TOPIC)
def deliver_notification(hub: Hub, message_id: str, payload: dict[str, Any]) -> None:
    subscription_id = str(payload["subscription"])
    focus = str(payload["focus"])
    version = int(payload["version"])
    resource_type, resource_id = focus.split("/", 1)
    with hub.db.snapshot() as session:
        store = FhirStore(session, base_url=hub.settings.fhir_base_url)
        stored = store.current("Subscription", subscription_id)
        if stored is None or stored.deleted or stored.content is None:
            raise PermanentDeliveryError(f"Subscription/{subscription_id} was deleted")
        subscription = stored.content
        if subscription.get("status") != "active":
            raise PermanentDeliveryError(
                f"Subscription/{subscription_id} is {subscription.get('status')}, not active"
            )
        mime = payload_type(subscription)
        body = store.vread(resource_type, resource_id, version).content if mime else None
    endpoint = str(subscription["channel"]["endpoint"])
    problem = endpoint_problem(endpoint, AllowList.parse(hub.settings.endpoint_allowed_hosts))
    if problem:
        raise PermanentDeliveryError(problem)
    headers = {
        **headers_of(subscription),
        "X-Emr-Hub-Subscription": f"Subscription/{subscription_id}",
        "X-Emr-Hub-Focus": f"{focus}/_history/{version}",
    }
    if mime:
        url = f"{endpoint.rstrip('/')}/{resource_type}/{resource_id}"
        send_http(
            message_id, "PUT", url, json_codec.dumps(body), content_type=FHIR_JSON, headers=headers
        )
    else:
        send_http(message_id, "POST", endpoint, None, headers=headers)
