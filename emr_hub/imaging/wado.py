"""WADO-RS (PS3.18 §10.4): instances, metadata, frames and rendered images, streamed from the
object store.

* instances go out as ``multipart/related; type="application/dicom"``, one part per
  instance, each read from the store chunk by chunk as it is sent;
* a series' metadata is one object (written by STOW), a study's the series' objects in turn;
* frames of native (uncompressed) pixel data are cut out of the stored object by their
  offsets, known from the header; compressed frames are served as encoded, found through the
  Basic Offset Table (or one fragment per frame);
* ``/rendered`` decodes one single-frame image (the one place pixel data enters memory,
  bounded by :data:`MAX_RENDERED_BYTES`) and encodes it as JPEG or PNG.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Iterator

from emr_hub.errors import FhirError, Issue, bad_request
from storage.objects import ObjectStore
from storage.tables import DicomInstance

OCTETS = "application/octet-stream"
MAX_RENDERED_BYTES = 256 * 1024 * 1024


def not_acceptable(message: str) -> FhirError:
    return FhirError(406, [Issue("not-supported", message)])


def instance_parts(
    objects: ObjectStore, rows: Iterable[DicomInstance]
) -> Iterator[tuple[dict[str, str], Iterable[bytes]]]:
    for row in rows:
        headers = {
            "Content-Type": f"application/dicom; transfer-syntax={row.transfer_syntax}",
            "Content-Location": row.sop_uid,
        }
        yield headers, _lazy(objects, row.object_key)


def _lazy(objects: ObjectStore, key: str) -> Iterator[bytes]:
    """The object's chunks, its download opened only when the first one is wanted."""
    with objects.get(key) as reader:  # type: ignore[attr-defined]
        yield from reader


def byte_range(objects: ObjectStore, key: str, start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of an object from ``start``, streamed (a range read of the store)."""
    got = 0
    with objects.get(key, start, length) as reader:  # type: ignore[attr-defined]
        for chunk in reader:
            got += len(chunk)
            yield chunk
    if got < length:
        raise FhirError(500, [Issue("exception", "The stored instance is shorter than indexed")])


def frame_numbers(text: str, frames: int) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise bad_request("Frames are given as 1,2,3 (numbers from 1)", "frames") from None
    if not numbers or any(n < 1 or n > frames for n in numbers):
        raise bad_request(f"The instance has frames 1 to {frames}", "frames")
    return numbers


def frame_parts(
    objects: ObjectStore, row: DicomInstance, numbers: list[int]
) -> Iterator[tuple[dict[str, str], Iterable[bytes]]]:
    """The frames ``numbers`` as parts: native frames cut out by offset, encapsulated
    (compressed) ones as they are encoded, one per part."""
    if row.pixel_offset is None:
        raise not_acceptable("The instance has no pixel data")
    if row.frame_bytes is None:
        frames = encapsulated_frames(objects, row, set(numbers))
        headers = {"Content-Type": f"{OCTETS}; transfer-syntax={row.transfer_syntax}"}
        for number in numbers:
            yield headers, [frames[number]]
        return
    for number in numbers:
        start = row.pixel_offset + (number - 1) * row.frame_bytes
        headers = {"Content-Type": f"{OCTETS}; transfer-syntax={row.transfer_syntax}"}
        yield headers, byte_range(objects, row.object_key, start, row.frame_bytes)


class _Reader:
    """Sequential reads of exact sizes over an object's chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._held = b""

    def read(self, size: int) -> bytes:
        while len(self._held) < size:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._held += chunk
        data, self._held = self._held[:size], self._held[size:]
        if len(data) < size:
            raise FhirError(500, [Issue("exception", "The stored pixel data ends early")])
        return data


ITEM, SEQUENCE_END = 0xFFFEE000, 0xFFFEE0DD


def encapsulated_frames(
    objects: ObjectStore, row: DicomInstance, wanted: set[int]
) -> dict[int, bytes]:
    """The wanted frames of encapsulated pixel data, read in one pass over its items: the
    Basic Offset Table says where each frame starts; without one, one fragment is one frame
    (or all fragments are the frame of a single-frame instance)."""
    assert row.pixel_offset is not None
    with objects.get(row.object_key, row.pixel_offset) as chunks:  # type: ignore[attr-defined]
        reader = _Reader(iter(chunks))
        table_length = _item(reader)
        table = reader.read(table_length)
        starts = [int.from_bytes(table[i : i + 4], "little") for i in range(0, len(table), 4)]
        frames: dict[int, bytearray] = {}
        position = fragment = 0
        while True:
            length = _item(reader)
            if length < 0:
                break
            if starts:
                number = sum(1 for start in starts if start <= position)
            else:
                number = fragment + 1 if row.frames > 1 else 1
            data = reader.read(length)
            if number in wanted:
                frames.setdefault(number, bytearray()).extend(data)
            position += 8 + length
            fragment += 1
    if not starts and row.frames > 1 and fragment != row.frames:
        raise not_acceptable("Without an offset table the frames cannot be told apart")
    missing = wanted - set(frames)
    if missing:
        raise not_acceptable(f"Frames {sorted(missing)} cannot be told apart in the pixel data")
    return {number: bytes(data) for number, data in frames.items()}


def _item(reader: _Reader) -> int:
    """The length of the next item, or -1 at the sequence's end."""
    head = reader.read(8)
    tag = int.from_bytes(head[:2], "little") << 16 | int.from_bytes(head[2:4], "little")
    if tag == SEQUENCE_END:
        return -1
    if tag != ITEM:
        raise FhirError(500, [Issue("exception", "The stored pixel data is not encapsulated")])
    return int.from_bytes(head[4:8], "little")


def pixel_data_part(
    objects: ObjectStore, row: DicomInstance
) -> Iterator[tuple[dict[str, str], Iterable[bytes]]]:
    """The native pixel data of an instance (its BulkDataURI), frame after frame."""
    if row.frame_bytes is None:
        raise not_acceptable("Compressed pixel data is served as frames; or retrieve the instance")
    return frame_parts(objects, row, list(range(1, row.frames + 1)))


def array_items(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """What lies between the outer brackets of a JSON array streamed in ``chunks``."""
    held = b""
    started = False
    for chunk in chunks:
        data = held + chunk
        if not started:
            data = data.lstrip()
            if not data:
                continue
            data = data[1:]  # the '['
            started = True
        held = data[-1:]
        if data[:-1]:
            yield data[:-1]
    remainder = held.rstrip()
    if remainder.endswith(b"]"):
        remainder = remainder[:-1]
    if remainder:
        yield remainder


def joined_arrays(arrays: Iterable[Iterable[bytes]]) -> Iterator[bytes]:
    """One JSON array of the items of several streamed arrays."""
    yield b"["
    first = True
    for array in arrays:
        leading = True
        for piece in array_items(array):
            if leading:
                if not first:
                    yield b","
                first = leading = False
            yield piece
    yield b"]"


def render(objects: ObjectStore, row: DicomInstance, media_type: str) -> bytes:
    """A single-frame instance as ``image/jpeg`` or ``image/png``, windowed as its header says."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_voi_lut

    if row.frames != 1:
        raise not_acceptable("Rendered images are served for single-frame instances")
    if row.size > MAX_RENDERED_BYTES:
        raise not_acceptable("The instance is too large to render; retrieve it")
    with objects.get(row.object_key) as reader:  # type: ignore[attr-defined]
        data = b"".join(reader)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(io.BytesIO(data))
            pixels = apply_voi_lut(dataset.pixel_array, dataset)
    except Exception as error:  # noqa: BLE001 - a decoder missing or failing: not renderable
        raise not_acceptable(f"The pixel data cannot be rendered here: {error}") from None
    values = pixels.astype("float64")
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) * 255 if high > low else values * 0
    if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        scaled = 255 - scaled
    image = Image.fromarray(np.clip(scaled, 0, 255).astype("uint8"))
    out = io.BytesIO()
    if media_type == "image/png":
        image.save(out, format="PNG")
    else:
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
            out, format="JPEG", quality=90
        )
    return out.getvalue()
