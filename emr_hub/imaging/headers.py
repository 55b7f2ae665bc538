"""What the hub keeps of a DICOM instance, read from the start of its bytes.

Only the header is parsed (pydicom's ``stop_before_pixels``), from the first bytes of the
instance that STOW kept while streaming the rest to the object store (at most
``EMR_HUB_DICOM_HEADER_BYTES``): the pixel data never enters memory. The pixel data's place
and length are noted so frames can later be cut out of the stored object, and the instance is
checked for completeness against its declared lengths (a truncated upload is refused).
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from emr_hub.imaging.uids import is_uid

PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
NATIVE_SYNTAXES = frozenset({IMPLICIT_LITTLE, EXPLICIT_LITTLE, EXPLICIT_BIG})
SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
"""The sequence delimitation item that ends encapsulated pixel data (always little endian)."""

INDEXED = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "InstanceNumber",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
)
"""The attributes the index, the ImagingStudy and the frame offsets are made from."""

# Failure reasons of the Store Instances Response (PS3.18 Table I.2-3 and PS3.4 Annex B).
PROCESSING_FAILURE = 0x0110
DUPLICATE_INSTANCE = 0x0111
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DATA_SET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000


class Refused(Exception):
    """The instance cannot be stored; ``reason`` is its FailureReason code."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class InstanceHeader:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    dataset: Dataset = field(repr=False)
    pixel_offset: int | None = None
    """Where the pixel data's value starts in the instance (for encapsulated pixel data: its
    first item, the Basic Offset Table)."""
    pixel_length: int | None = None
    has_pixels: bool = False
    pixel_vr: str = "OW"

    metadata_json: str | None = None
    """The DICOM JSON of the header (set by :meth:`kept`)."""

    def kept(self, bulk_data_uri: str) -> InstanceHeader:
        """What the hub keeps of the header while an upload goes on: its DICOM JSON and the
        attributes it indexes, not the whole parsed data set (hundreds of elements each,
        which would add up over a study of thousands of instances)."""
        small = Dataset()
        for keyword in INDEXED:
            if keyword in self.dataset:
                small[keyword] = self.dataset[keyword]
        body = orjson.dumps(self.metadata(bulk_data_uri)).decode()
        return replace(self, dataset=small, metadata_json=body)

    def text(self, keyword: str) -> str | None:
        value = self.dataset.get(keyword)
        if value is None or value == "":
            return None
        return str(value).strip() or None

    def number(self, keyword: str) -> int | None:
        value = self.dataset.get(keyword)
        try:
            return int(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    @property
    def frames(self) -> int:
        return self.number("NumberOfFrames") or 1

    @property
    def frame_bytes(self) -> int | None:
        """The size of one native frame, when the instance's pixel data is native."""
        rows, columns = self.number("Rows"), self.number("Columns")
        samples, bits = self.number("SamplesPerPixel") or 1, self.number("BitsAllocated")
        if rows is None or columns is None or bits is None or bits % 8:
            return None
        if self.pixel_offset is None or self.transfer_syntax not in NATIVE_SYNTAXES:
            return None
        return rows * columns * samples * bits // 8

    def metadata(self, bulk_data_uri: str) -> dict[str, Any]:
        """The DICOM JSON of the header, the pixel data as a BulkDataURI."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            body = _ELEMENT_JSON.of(self.dataset)
        if self.has_pixels:
            body["7FE00010"] = {"vr": self.pixel_vr, "BulkDataURI": bulk_data_uri}
        return body


class ElementJson:
    """The DICOM JSON of a data set's elements, remembering what each raw element gave.

    pydicom's ``to_json_dict`` decodes and converts every element (about 5 ms for a CT
    header of 250 elements, most of an upload's CPU). The instances of a series repeat most
    of their elements byte for byte (patient, study, equipment, geometry), so the JSON of a
    raw element is kept by what decides it: its tag, VR, encoding, character set and value
    bytes. What is not a small raw element with a known VR (sequences, long values, private
    tags in implicit VR, whose VR depends on their creator) is converted by pydicom each
    time. The result is what pydicom gives, element by element.
    """

    LIMIT = 4096
    """Entries kept; the memory is forgotten whole when it is full (a series' repeated elements,
    a few hundred, come back with its next instance)."""
    LONGEST = 1024
    """Values longer than this are not remembered (they rarely repeat and would hold memory)."""

    def __init__(self) -> None:
        self._known: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def of(self, dataset: Dataset) -> dict[str, Any]:
        charset = str(dataset.get("SpecificCharacterSet", ""))
        body: dict[str, Any] = {}
        for tag in dataset.keys():  # noqa: SIM118 - iterating a Dataset decodes its elements
            body[f"{tag:08X}"] = self._element(dataset, tag, charset)
        return body

    def _element(self, dataset: Dataset, tag: Any, charset: str) -> dict[str, Any]:
        raw = dataset.get_item(tag)  # the raw element: its value is not decoded
        if (
            not isinstance(raw, RawDataElement)
            or (raw.is_implicit_VR and (tag >> 16) & 1)
            or raw.VR == "UN"  # pydicom may look its VR up, by tag and private creator
            or raw.value is None
            or len(raw.value) > self.LONGEST
        ):
            return _json_element(dataset, tag)
        key = (int(tag), raw.VR, raw.is_implicit_VR, raw.is_little_endian, charset, raw.value)
        found = self._known.get(key)
        if found is None:
            found = _json_element(dataset, tag)
            with self._lock:
                if len(self._known) >= self.LIMIT:
                    self._known.clear()
                self._known[key] = found
        return found


def _json_element(dataset: Dataset, tag: Any) -> dict[str, Any]:
    element: dict[str, Any] = dataset[tag].to_json_dict(None, 1 << 30)
    return element


_ELEMENT_JSON = ElementJson()


def read_header(prefix: bytes, size: int, sequence_end: int | None) -> InstanceHeader:
    """The header of an instance of ``size`` bytes whose first bytes are ``prefix``;
    ``sequence_end`` is where the last sequence delimitation item found in the instance ends
    (None: none found). :class:`Refused` when it is not a complete DICOM Part 10 instance."""
    source = io.BytesIO(prefix)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(source, stop_before_pixels=True)
            stop = source.tell()
            dataset.buffer = None  # keep the header's values, not the instance's first bytes
            transfer_syntax = str(dataset.file_meta.get("TransferSyntaxUID", "") or "")
            uids = {
                "study": dataset.get("StudyInstanceUID"),
                "series": dataset.get("SeriesInstanceUID"),
                "sop": dataset.get("SOPInstanceUID"),
                "class": dataset.get("SOPClassUID"),
            }
    except (InvalidDicomError, EOFError, ValueError, KeyError, struct.error, TypeError) as error:
        raise Refused(CANNOT_UNDERSTAND, f"not a DICOM Part 10 instance: {error}") from None
    for name, value in uids.items():
        if not is_uid(str(value) if value is not None else None):
            raise Refused(CANNOT_UNDERSTAND, f"the {name} UID is missing or not a DICOM UID")
    if not is_uid(transfer_syntax):
        raise Refused(CANNOT_UNDERSTAND, "the file meta information has no transfer syntax")
    if transfer_syntax == DEFLATED:
        raise Refused(SOP_CLASS_NOT_SUPPORTED, "deflated transfer syntax is not accepted")
    media_sop = dataset.file_meta.get("MediaStorageSOPInstanceUID")
    if media_sop and str(media_sop) != str(uids["sop"]):
        raise Refused(
            DATA_SET_MISMATCH, "the file meta's SOP Instance UID differs from the data set's"
        )
    little = transfer_syntax != EXPLICIT_BIG
    implicit = transfer_syntax == IMPLICIT_LITTLE
    offset = length = None
    has_pixels = False
    vr = "OW"
    element = prefix[stop : stop + 12]
    if len(element) >= 8 and _tag(element, little) == PIXEL_DATA:
        has_pixels = True
        offset, length, vr = _pixel_element(element, little, implicit)
        if length == UNDEFINED_LENGTH:
            if sequence_end is None or sequence_end <= offset + stop:
                raise Refused(CANNOT_UNDERSTAND, "the encapsulated pixel data is truncated")
            offset, length = offset + stop, None  # its items start there
        else:
            offset += stop
            if offset + length > size:
                raise Refused(CANNOT_UNDERSTAND, "the pixel data is truncated")
    elif size > len(prefix):
        raise Refused(OUT_OF_RESOURCES, "the header is longer than the hub reads")
    else:
        _check_complete(dataset, size)
    return InstanceHeader(
        study_uid=str(uids["study"]),
        series_uid=str(uids["series"]),
        sop_uid=str(uids["sop"]),
        sop_class_uid=str(uids["class"]),
        transfer_syntax=transfer_syntax,
        dataset=dataset,
        pixel_offset=offset,
        pixel_length=length,
        has_pixels=has_pixels,
        pixel_vr=vr,
    )


def _tag(element: bytes, little: bool) -> int:
    group, number = struct.unpack("<HH" if little else ">HH", element[:4])
    return int(group) << 16 | int(number)


def _pixel_element(element: bytes, little: bool, implicit: bool) -> tuple[int, int, str]:
    """(value offset from the element's start, value length, VR) of the pixel data element."""
    order = "<" if little else ">"
    if implicit:
        return 8, int(struct.unpack(order + "I", element[4:8])[0]), "OW"
    vr = element[4:6].decode("latin-1")
    return 12, int(struct.unpack(order + "I", element[8:12])[0]), vr if vr in ("OB", "OW") else "OW"


def _check_complete(dataset: Dataset, size: int) -> None:
    """An instance without pixel data ends where its last element's value ends."""
    for tag in dataset.keys():  # noqa: SIM118 - iterating a Dataset decodes its elements
        element = dataset.get_item(tag)  # the raw element: its value is not decoded
        tell, length = getattr(element, "value_tell", None), getattr(element, "length", None)
        if tell is None or length is None or length == UNDEFINED_LENGTH:
            continue
        if tell + length > size:
            raise Refused(CANNOT_UNDERSTAND, "the instance is truncated")
