"""WADO-RS (PS3.18 §10.4): instances, metadata, frames and rendered images, streamed from the
object store.

* instances go out as ``multipart/related; type="application/dicom"``, one part per
  instance, each read from the store chunk by chunk as it is sent;
* a series' metadata is one object (written by STOW), a study's the series' objects in turn;
* frames of native (uncompressed) pixel data are cut out of the stored object by their
  offsets, known from the header; compressed pixel data is retrieved as instances;
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
    """``length`` bytes of an object from ``start``, streamed (the store reads from the start)."""
    position = 0
    end = start + length
    with objects.get(key) as reader:  # type: ignore[attr-defined]
        for chunk in reader:
            chunk_end = position + len(chunk)
            if chunk_end > start:
                yield chunk[max(start - position, 0) : min(end - position, len(chunk))]
            position = chunk_end
            if position >= end:
                return
    if position < end:
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
    if row.pixel_offset is None or row.frame_bytes is None:
        raise not_acceptable(
            "Frames are served for native (uncompressed) pixel data; retrieve the instance"
        )
    for number in numbers:
        start = row.pixel_offset + (number - 1) * row.frame_bytes
        headers = {"Content-Type": f"{OCTETS}; transfer-syntax={row.transfer_syntax}"}
        yield headers, byte_range(objects, row.object_key, start, row.frame_bytes)


def pixel_data_part(
    objects: ObjectStore, row: DicomInstance
) -> Iterator[tuple[dict[str, str], Iterable[bytes]]]:
    """The whole native pixel data of an instance (its BulkDataURI), as one part."""
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
