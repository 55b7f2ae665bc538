"""The C-STORE receiver (``emr-hub dicom-scp``): classic DICOM for the modalities and PACS that
do not speak DICOMweb, on pynetdicom, storing through STOW's code path.

* Only calling AE titles registered to a hospital (``emr-hub dicom-ae add``, table
  ``dicom_ae``) are accepted; the list is read at each association, so a registration takes
  effect without a restart. The association acts as that hospital, with the scopes a STOW
  needs (ImagingStudy ``cru``, Patient and ServiceRequest ``s``): the access policy applies.
* Each C-STORE streams the instance to the object store and checks its header and its patient
  right away, so the modality hears of a refusal in the C-STORE response; what was accepted is
  indexed when the association ends (released or aborted), in one transaction: one ImagingStudy
  version per study per association, with its audit record.
* C-ECHO (Verification) answers success.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from emr_hub.hub import Hub
from emr_hub.imaging.headers import PROCESSING_FAILURE
from emr_hub.imaging.multipart import Part
from emr_hub.imaging.stow import DICOM, Accepted, Outcome, commit, receive, remove_objects
from emr_hub.imaging.study import NoPatient, match_patient
from emr_hub.security.access import store_for
from emr_hub.security.audit.trail import AuditTrail
from emr_hub.security.principal import HOSPITAL, Principal
from emr_hub.security.scopes import ScopeSet
from storage.tables import DicomAe

log = logging.getLogger(__name__)
SCOPES = "system/ImagingStudy.cru system/Patient.s system/ServiceRequest.s"
NOT_AUTHORISED = 0x0124
NOBODY = " "
"""What pynetdicom is given as the accepted titles when none is registered: an empty list
would accept every caller; this one (a blank title, which no caller has) accepts none."""


def registered_titles(hub: Hub) -> dict[str, str]:
    """The calling AE titles the receiver accepts, with their hospitals."""
    with hub.db.snapshot() as session:
        return dict(session.execute(select(DicomAe.ae_title, DicomAe.organization)).all())


def register_title(hub: Hub, ae_title: str, organization: str) -> None:
    """Accept ``ae_title`` as a sender for ``organization`` (``Organization/<id>``)."""
    title = ae_title.strip()
    if not 1 <= len(title) <= 16 or "\\" in title or not title.isprintable():
        raise ValueError("an AE title is 1 to 16 printable characters, no backslash")
    if not organization.startswith("Organization/") or len(organization) > 128:
        raise ValueError("the organization is given as Organization/<id>")
    with hub.db.transaction() as session:
        row = session.get(DicomAe, title)
        if row is None:
            session.add(DicomAe(ae_title=title, organization=organization, created_at=_now()))
        else:
            row.organization = organization


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Association:
    principal: Principal
    accepted: list[Accepted] = field(default_factory=list)
    outcome: Outcome = field(default_factory=Outcome)
    written: list[str] = field(default_factory=list)


class _HubAE(AE):  # type: ignore[misc]
    """An AE whose accepted calling titles are the registered ones, read per association."""

    def __init__(self, hub: Hub, ae_title: str) -> None:
        super().__init__(ae_title=ae_title)
        self._hub = hub

    @property  # type: ignore[override]
    def require_calling_aet(self) -> list[str]:
        return sorted(registered_titles(self._hub)) or [NOBODY]


class Receiver:
    """The receiver's AE and the associations in progress."""

    def __init__(self, hub: Hub, ae_title: str = "EMRHUB") -> None:
        self.hub = hub
        self.ae = _HubAE(hub, ae_title)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        self._associations: dict[int, _Association] = {}
        self._lock = threading.Lock()

    def handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_CONN_CLOSE, self.on_close),
        ]

    def serve(self, host: str, port: int, *, block: bool = True) -> Any:
        """Listen on ``host:port``; with ``block=False`` return the server (``shutdown()``)."""
        return self.ae.start_server((host, port), block=block, evt_handlers=self.handlers())

    def _state(self, assoc: Any) -> _Association | None:
        with self._lock:
            state = self._associations.get(id(assoc))
            if state is not None:
                return state
        title = str(assoc.requestor.ae_title).strip()
        organization = registered_titles(self.hub).get(title)
        if organization is None:
            return None
        principal = Principal(
            client_id=f"dicom-ae:{title}",
            organization=organization,
            scopes=ScopeSet.parse(SCOPES),
            token_id="",
            kind=HOSPITAL,
            trail=AuditTrail(
                request_id=str(uuid.uuid4()),
                address=assoc.requestor.address,
                method="POST",
                path="/dicom/c-store",
                started=_now(),
            ),
        )
        assert principal.trail is not None
        principal.trail.principal = principal
        state = _Association(principal)
        with self._lock:
            self._associations[id(assoc)] = state
        return state

    def on_store(self, event: Any) -> int:
        state = self._state(event.assoc)
        if state is None:
            return NOT_AUTHORISED
        part = Part({"content-type": DICOM}, iter([event.encoded_dataset(include_meta=True)]))
        failed = len(state.outcome.failed)
        accepted = receive(self.hub, [part], None, state.outcome, state.written)
        if not accepted:
            return state.outcome.failed[failed][2]
        item = accepted[0]
        try:
            with self.hub.db.snapshot() as session:
                store = store_for(session, self.hub.settings, state.principal)
                match_patient(store, state.principal, item.header.text("PatientID"))
        except NoPatient:
            remove_objects(self.hub, [item.stored.key])
            return PROCESSING_FAILURE
        state.accepted.append(item)
        return 0x0000

    def on_close(self, event: Any) -> None:
        with self._lock:
            state = self._associations.pop(id(event.assoc), None)
        if state is None or not state.accepted:
            return
        try:
            commit(self.hub, state.principal, state.accepted, state.outcome, state.written)
        except Exception:
            log.exception("instances of an association could not be indexed; removed")
            remove_objects(self.hub, state.written)
            return
        log.info(
            "association from %s: %d instances stored, %d refused",
            state.principal.client_id,
            len(state.outcome.stored),
            len(state.outcome.failed),
        )
