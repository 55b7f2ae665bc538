"""The API fixtures of tests/fhir, shared here."""

from tests.fhir.conftest import api, app_client

__all__ = ["api", "app_client"]
