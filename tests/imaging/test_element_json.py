"""The header's DICOM JSON, with what earlier instances taught the memory, is pydicom's."""

from __future__ import annotations

import io
import warnings

import pydicom
import pytest
from pydicom.data import get_testdata_file

from emr_hub.imaging.headers import ElementJson

FILES = [
    "CT_small.dcm",  # private tags in explicit VR
    "MR_small.dcm",
    "MR_small_implicit.dcm",  # implicit VR: private tags' VR from the dictionary
    "rtplan.dcm",  # sequences
    "rtstruct.dcm",
    "rtdose.dcm",
    "JPEG2000.dcm",
]
"""Files pydicom ships (``get_testdata_file`` would try to download the others)."""


def _read(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom does not ship {name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def _pydicom_json(dataset: pydicom.Dataset) -> dict[str, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dataset.to_json_dict(bulk_data_threshold=1 << 30)


@pytest.mark.parametrize("name", FILES)
def test_each_file_gives_pydicoms_json_cold_and_remembered(name: str) -> None:
    memory = ElementJson()
    for other in FILES:  # the memory filled by every other file first, as in a busy hub
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            memory.of(_read(other))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert memory.of(_read(name)) == _pydicom_json(_read(name))
        assert memory.of(_read(name)) == _pydicom_json(_read(name))


def _with_name(charset: str, name: bytes) -> pydicom.Dataset:
    """A data set read back from bytes, whose PatientName holds ``name`` as stored."""
    dataset = _read("CT_small.dcm")
    dataset.SpecificCharacterSet = charset
    dataset.PatientName = name
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    out.seek(0)
    return pydicom.dcmread(out, stop_before_pixels=True)


def test_the_same_bytes_under_another_character_set_are_decoded_again() -> None:
    memory = ElementJson()
    name = "Nguyễn^Thị Lan".encode()
    utf8, latin = _with_name("ISO_IR 192", name), _with_name("ISO_IR 100", name)
    assert utf8.get_item(0x00100010).value == latin.get_item(0x00100010).value
    first = memory.of(utf8)["00100010"]
    second = memory.of(latin)["00100010"]
    assert first == {"vr": "PN", "Value": [{"Alphabetic": "Nguyễn^Thị Lan"}]}
    assert second == _pydicom_json(_with_name("ISO_IR 100", name))["00100010"] != first


def test_the_memory_forgets_when_full() -> None:
    memory = ElementJson()
    memory.LIMIT = 10
    dataset = _read("CT_small.dcm")
    assert memory.of(dataset) == _pydicom_json(_read("CT_small.dcm"))
    assert len(memory._known) <= 10
