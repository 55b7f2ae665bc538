"""The DICOMweb addresses the hub hands out (RetrieveURL, BulkDataURI, the Endpoint)."""

from __future__ import annotations

from typing import Protocol


class _Instance(Protocol):
    study_uid: str
    series_uid: str
    sop_uid: str


class DicomUrls:
    def __init__(self, base_url: str) -> None:
        self.root = base_url.rstrip("/") + "/dicomweb"

    def study(self, study_uid: str) -> str:
        return f"{self.root}/studies/{study_uid}"

    def series(self, study_uid: str, series_uid: str) -> str:
        return f"{self.study(study_uid)}/series/{series_uid}"

    def instance(self, instance: _Instance) -> str:
        return (
            f"{self.series(instance.study_uid, instance.series_uid)}/instances/{instance.sop_uid}"
        )

    def pixel_data(self, instance: _Instance) -> str:
        """The BulkDataURI of an instance's pixel data."""
        return f"{self.instance(instance)}/pixeldata"
