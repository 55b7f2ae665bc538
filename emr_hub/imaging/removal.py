"""Deleting a study: whichever way its ImagingStudy is deleted (DICOMweb ``DELETE``, or the
FHIR API), its index rows go in the same transaction and its objects are removed after the
commit through the outbox (topic ``imaging.remove-objects``), so a rolled-back delete removes
nothing and a crash after the commit still removes them (the message is retried)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from emr_hub import outbox
from emr_hub.fhir import hooks
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.hub import Hub
from emr_hub.imaging.index import remove_study
from emr_hub.security.principal import Principal
from storage.tables import DicomStudy

TOPIC = "imaging.remove-objects"


def forget_study(store: FhirStore, _principal: Principal, current: Stored) -> None:
    """The delete hook of ImagingStudy: its study's rows now, its objects after the commit."""
    session = store.session
    session.flush()
    query = select(DicomStudy).where(DicomStudy.imaging_study_id == current.id)
    row = session.scalars(query).one_or_none()
    if row is None:
        return
    keys = remove_study(session, row.study_uid)
    if keys:
        outbox.add_message(session, TOPIC, {"keys": keys}, subject=f"ImagingStudy/{current.id}")


@outbox.handler(TOPIC)
def remove_objects(hub: Hub, _message_id: str, payload: dict[str, Any]) -> None:
    """Delete the objects (deleting a missing one is no error, so a retry is harmless)."""
    for key in payload["keys"]:
        hub.objects.delete(key)


def install() -> None:
    hooks.register_delete("ImagingStudy", forget_study)
