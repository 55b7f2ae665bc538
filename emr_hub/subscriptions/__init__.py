"""FHIR R4 rest-hook Subscriptions: validated on write, matched on every write, delivered by
the outbox.

* :mod:`.rules` checks a Subscription when it is written (channel, endpoint host, criteria,
  headers) and activates it.
* :mod:`.matching` runs before every commit that changed resources: it keeps the route table of
  active Subscriptions in step and queues one outbox message per (Subscription, matching
  version), in the same transaction as the write.
* :mod:`.delivery` is the outbox handler that sends the notification (with retries, backoff
  and an idempotency key: the outbox's).
* :mod:`.routes` serves ``Subscription/{id}/$delivery-log``.
"""

from __future__ import annotations

from emr_hub.config import Settings
from emr_hub.fhir import hooks, operations, output
from emr_hub.subscriptions import delivery, hosts

__all__ = ["delivery", "install"]  # importing delivery registers its outbox handler
from emr_hub.subscriptions.matching import match_changes
from emr_hub.subscriptions.rules import check_subscription, hide_headers


def install(settings: Settings) -> None:
    """Register the write and change hooks; the endpoint allow-list comes from ``settings``."""
    hosts.configure(settings.endpoint_allowed_hosts)
    hooks.register("Subscription", check_subscription)
    output.register("Subscription", hide_headers)
    hooks.on_changes(match_changes)
    operations.declare(
        "Subscription",
        "delivery-log",
        "urn:emr-hub:operation:delivery-log",
        "The notifications sent for the Subscription, newest first: key, focus version, state, "
        "attempts, last error.",
    )
