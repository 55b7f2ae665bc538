"""The DICOM UID grammar (PS3.5 §9.1), checked before a UID names an object or a row.

A UID is at most 64 characters of dot-separated components, each digits only, without a
leading zero unless the component is ``0``. Nothing else (no ``/``, no ``..``) gets through,
so a UID from a header or a URL can never reach outside its place in the object store.
"""

from __future__ import annotations

import re

from emr_hub.errors import bad_request

MAX_UID_LENGTH = 64
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_uid(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= MAX_UID_LENGTH
        and _UID.fullmatch(value) is not None
    )


def require_uid(value: str, name: str) -> str:
    """``value`` when it is a UID, else a 400 naming the path parameter ``name``."""
    if not is_uid(value):
        raise bad_request(f"{name} is not a DICOM UID (digits and dots, at most 64)", name)
    return value
