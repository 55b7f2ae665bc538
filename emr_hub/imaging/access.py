"""Which DICOM studies a caller may see: those whose ImagingStudy the access policy lets it
read. QIDO adds :func:`visible_studies` to its SQL; WADO reads the study's ImagingStudy
through the FHIR store (:func:`readable_study`), which is also what the audit record names.
A study the caller may not see is answered exactly like one that does not exist (404)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, exists, true

from emr_hub.errors import FhirError, not_found
from emr_hub.fhir.store import FhirStore
from emr_hub.security.principal import Principal
from storage.tables import DicomStudy, ResourceRow

RESOURCE = ResourceRow.__table__
STUDY = DicomStudy.__table__


def visible_studies(store: FhirStore) -> tuple[ColumnElement[bool], dict[str, Any]]:
    """The condition on ``dicom_study`` keeping the studies the store's principal may see, and
    the bound values it needs."""
    resource = RESOURCE.alias("imaging_study_resource")
    visible = store.visible(resource, "ImagingStudy")
    condition = exists().where(
        resource.c.resource_type == "ImagingStudy",
        resource.c.id == STUDY.c.imaging_study_id,
        resource.c.deleted.is_(False),
        visible if visible is not None else true(),
    )
    return condition, store.access_params()


def readable_study(store: FhirStore, principal: Principal, study_uid: str) -> DicomStudy:
    """The index row of a study the principal may read (scope ``ImagingStudy.r`` and the
    policy on its ImagingStudy), else 404."""
    principal.require("ImagingStudy", "r")
    row = store.session.get(DicomStudy, study_uid)
    if row is None:
        raise not_found(f"Study {study_uid} is not known")
    try:
        store.read("ImagingStudy", row.imaging_study_id)
    except FhirError as error:
        if error.status in (404, 410):
            raise not_found(f"Study {study_uid} is not known") from None
        raise
    return row
