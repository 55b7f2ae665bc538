"""The demo's DICOM study: the chest CT Bắc Ninh general took of the demo patient on 22 October
2026, during her stay (``ImagingStudy/demo-lan-bac-ninh-ct``), sent to Bạch Mai with her letter.

The instance is pydicom's shipped ``CT_small.dcm`` (one 128 × 128 CT slice) re-identified for
the demo (:func:`demo_instance`): UIDs derived from fixed names (``2.25.<uuid5>``), PatientID
her CCCD (what :func:`emr_hub.imaging.study.match_patient` matches for the sender), her name,
birth date and sex, a fixed date, the hospital as institution, and nothing left of the file's
own identifiers (private elements, other patient IDs, station, creator and frame UIDs).

It is stored through STOW's code path (:func:`emr_hub.imaging.stow.store_instances`) as the
hospital, after the referral chain (its stay is what opens her record to it), with a
:class:`~emr_hub.imaging.stow.Filing` giving the ImagingStudy its fixed id, which the letter
names in ``supportingInfo``, and the demo tag. Bạch Mai sees it through its care of her (the
letter it received, its stay), the commune station, which never saw her, does not.

Idempotent as the rest of the demo (:func:`load_study`): once stored, the ImagingStudy is
compared with the one its index rows make; a change (or a deletion, which removes the study's
instances with it) is kept as it is unless ``reset``, which writes the demo's version over it
(or stores the instance again).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Mapping
from typing import Protocol

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from emr_hub.demo_chain import BAC_NINH_CT
from emr_hub.demo_writing import KEPT, WRITTEN, Facility, Writers, principal_of, write_versions
from emr_hub.fhir.store import FhirStore
from emr_hub.hub import Hub
from emr_hub.imaging.multipart import Part
from emr_hub.imaging.stow import DICOM, Filing, store_instances
from emr_hub.imaging.study import imaging_study
from storage.tables import DicomStudy

SOURCE_FILE = "CT_small.dcm"
UID_NAMESPACE = uuid.UUID("6f1c7a52-3d0e-5b8a-9c41-2e7d05a9b3f1")
"""The namespace of the demo's UIDs (any fixed UUID: it only has to stay the same)."""
STUDY_DATE, STUDY_TIME = "20261022", "093000"
DESCRIPTION = "CT ngực (dữ liệu demo)"


def demo_uid(name: str) -> str:
    """A valid DICOM UID for ``name``, the same on every run: ``2.25.`` and a UUID as an integer
    (PS3.5 §B.2), at most 44 characters."""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, f'emr-hub demo {name}').int}"


STUDY_UID = demo_uid("study")
SERIES_UID = demo_uid("series")
INSTANCE_UID = demo_uid("instance")


class Person(Protocol):
    """The patient of the study (the demo's ``DemoPatient``)."""

    @property
    def id(self) -> str: ...

    @property
    def family(self) -> str: ...

    @property
    def given(self) -> tuple[str, ...]: ...

    @property
    def gender(self) -> str: ...

    @property
    def birth_date(self) -> str: ...

    @property
    def cccd(self) -> str: ...


REMOVED = (
    "OtherPatientIDsSequence",
    "AdditionalPatientHistory",
    "InstanceCreatorUID",
    "StationName",
    "ImageComments",
)
"""The file's own identifying elements that the demo has no value for (private ones go too)."""


def demo_instance(sender: Facility, person: Person) -> bytes:
    """The CT slice as a Part 10 file of ``person``, taken at ``sender`` (the same bytes for the
    same pydicom)."""
    data = pydicom.dcmread(get_testdata_file(SOURCE_FILE))
    data.remove_private_tags()
    for keyword in REMOVED:
        if keyword in data:
            delattr(data, keyword)
    born = person.birth_date.replace("-", "")
    age = int(STUDY_DATE[:4]) - int(born[:4]) - (STUDY_DATE[4:] < born[4:])
    data.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, for her name and the hospital's
    values = {
        "PatientName": f"{person.family}^{' '.join(person.given)}",
        "PatientID": person.cccd,
        "PatientBirthDate": born,
        "PatientSex": {"female": "F", "male": "M"}.get(person.gender, "O"),
        "PatientAge": f"{age:03d}Y",
        "StudyInstanceUID": STUDY_UID,
        "SeriesInstanceUID": SERIES_UID,
        "SOPInstanceUID": INSTANCE_UID,
        "FrameOfReferenceUID": demo_uid("frame of reference"),
        "StudyID": "1",
        "AccessionNumber": "",
        "StudyDescription": DESCRIPTION,
        "SeriesDescription": DESCRIPTION,
        "InstitutionName": sender.name,
        "TimezoneOffsetFromUTC": "+0700",
    }
    for element in ("Study", "Series", "Acquisition", "Content", "InstanceCreation"):
        values[f"{element}Date"], values[f"{element}Time"] = STUDY_DATE, STUDY_TIME
    for keyword, value in values.items():
        setattr(data, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = data.SOPClassUID
    meta.MediaStorageSOPInstanceUID = INSTANCE_UID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    data.file_meta = meta
    out = io.BytesIO()
    data.save_as(out, enforce_file_format=True)
    return out.getvalue()


def load_study(
    hub: Hub, sender: Facility, person: Person, tag: Mapping[str, str], *, reset: bool
) -> str:
    """Store the demo study unless it is there; :data:`~emr_hub.demo_writing.WRITTEN`,
    ``UNCHANGED`` or ``KEPT`` as for the demo's other resources."""
    with hub.db.transaction() as session:
        writers = Writers(session, hub.settings.fhir_base_url)
        row = session.get(DicomStudy, STUDY_UID)
        if row is not None:
            resource = imaging_study(
                FhirStore(session), row, resource_id=BAC_NINH_CT, patient_id=person.id, based=[]
            )
            resource["meta"] = {"tag": [dict(tag)]}
            return write_versions(writers, [(sender, resource)], reset=reset)
        stored_once = writers.current("ImagingStudy", BAC_NINH_CT) is not None
    if stored_once and not reset:  # deleted since, its instance with it
        return KEPT
    principal = principal_of(sender)
    part = Part({"content-type": DICOM}, iter([demo_instance(sender, person)]))
    filing = Filing(ids={STUDY_UID: BAC_NINH_CT}, tags=(tag,))
    outcome = store_instances(hub, principal, [part], None, filing)
    if outcome.failed:
        reasons = ", ".join(f"0x{reason:04X}" for _, _, reason in outcome.failed)
        raise RuntimeError(f"the hub refused the demo study (STOW FailureReason {reasons})")
    return WRITTEN
