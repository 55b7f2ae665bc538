"""Imaging: DICOM instances in the object store, served over DICOMweb at ``/dicomweb``.

* :mod:`.multipart` streams ``multipart/related`` bodies in and out; :mod:`.body` lets a
  worker thread pull the request body as it arrives;
* :mod:`.headers` reads an instance's header (never its pixel data); :mod:`.uids` checks UIDs;
* :mod:`.stow` stores uploads, :mod:`.index` keeps the database index QIDO-RS is answered
  from (:mod:`.qido`), :mod:`.wado` retrieves, :mod:`.study` makes the ImagingStudy;
* :mod:`.removal` deletes a study's rows and objects with its ImagingStudy;
* :mod:`.dimse` is the C-STORE receiver (``emr-hub dicom-scp``);
* :mod:`.access` finds the studies a caller may see (those whose ImagingStudy it may read);
* :mod:`.routes` is the HTTP side.
"""

from __future__ import annotations

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """Add the DICOMweb routes; deleting an ImagingStudy deletes its study."""
    from emr_hub.imaging import removal
    from emr_hub.imaging.routes import router

    removal.install()
    app.include_router(router)
