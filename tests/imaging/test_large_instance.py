"""A multi-frame instance of 256 MiB, generated here, streams through STOW and WADO while
the serving process's memory stays flat (its resident set sampled while the bytes flow)."""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pydicom
from pydicom.uid import generate_uid

from tests.imaging.conftest import CT, Hospital, ServedHub, instance

ROWS = COLUMNS = 512
FRAME = ROWS * COLUMNS * 2
FRAMES = 512  # 256 MiB of pixel data
RSS_GROWTH_LIMIT = 96 * 1024 * 1024
BOUNDARY = "large-boundary"
T = TypeVar("T")


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_growth(work: Callable[[], T]) -> tuple[T, int]:
    """``work()``'s result and how far this process's resident set rose above where it began."""
    baseline = resident_bytes()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, resident_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return result, max(peak, resident_bytes()) - baseline


def frame(number: int) -> bytes:
    return struct.pack("<H", number) * (FRAME // 2)


def write_instance(path: Path, study: str) -> tuple[str, Any]:
    """A Part 10 file of FRAMES native frames written frame by frame; its SHA-256."""
    dataset = instance(CT, study=study)
    del dataset.PixelData
    dataset.Rows, dataset.Columns, dataset.NumberOfFrames = ROWS, COLUMNS, FRAMES
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
    dataset.SamplesPerPixel, dataset.PixelRepresentation = 1, 0
    digest = hashlib.sha256()
    with path.open("wb") as out:
        dataset.save_as(out, enforce_file_format=True)
        element = b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", FRAME * FRAMES)
        out.write(element)
    digest.update(path.read_bytes())
    with path.open("ab") as out:
        for number in range(FRAMES):
            data = frame(number)
            out.write(data)
            digest.update(data)
    return digest.hexdigest(), dataset


def body(path: Path) -> Iterator[bytes]:
    yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    with path.open("rb") as source:
        while chunk := source.read(1024 * 1024):
            yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def single_part_digest(chunks: Iterator[bytes], boundary: str) -> tuple[str, int]:
    """SHA-256 and size of the one part of a streamed multipart answer, never held whole."""
    digest = hashlib.sha256()
    tail = f"\r\n--{boundary}--\r\n".encode()
    held = b""
    started = False
    size = 0
    for chunk in chunks:
        held += chunk
        if not started:
            if b"\r\n\r\n" not in held:
                continue
            held = held.split(b"\r\n\r\n", 1)[1]
            started = True
        if len(held) > len(tail):
            digest.update(held[: -len(tail)])
            size += len(held) - len(tail)
            held = held[-len(tail) :]
    assert held == tail
    return digest.hexdigest(), size


def test_a_large_instance_streams_through_with_flat_memory(
    served: ServedHub, hospital_a: Hospital, tmp_path: Path
) -> None:
    served.patient(hospital_a, "BN-0001")
    study = generate_uid()
    path = tmp_path / "large.dcm"
    expected, dataset = write_instance(path, study)
    size = path.stat().st_size
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
    }

    def upload() -> Any:
        with served.http(hospital_a) as client:
            return client.post("/dicomweb/studies", content=body(path), headers=headers)

    answer, upload_growth = peak_growth(upload)

    assert answer.status_code == 200, answer.text
    url = answer.json()["00081199"]["Value"][0]["00081190"]["Value"][0]

    def download() -> tuple[str, int]:
        with served.http(hospital_a) as client, client.stream("GET", url) as response:
            assert response.status_code == 200
            boundary = response.headers["content-type"].split("boundary=")[1]
            return single_part_digest(response.iter_bytes(), boundary)

    (digest, downloaded), download_growth = peak_growth(download)

    assert (digest, downloaded) == (expected, size)
    print(f"{size >> 20} MiB: RSS +{upload_growth >> 20} MiB up, +{download_growth >> 20} MiB down")
    assert upload_growth < RSS_GROWTH_LIMIT, f"upload grew RSS by {upload_growth >> 20} MiB"
    assert download_growth < RSS_GROWTH_LIMIT, f"download grew RSS by {download_growth >> 20} MiB"
    with served.http(hospital_a) as client:
        last = client.get(f"{url}/frames/{FRAMES}")
    assert last.content.count(frame(FRAMES - 1)) == 1
    stored = pydicom.dcmread(path, stop_before_pixels=True)
    assert stored.SOPInstanceUID == dataset.SOPInstanceUID
