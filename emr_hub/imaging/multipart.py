"""``multipart/related`` bodies, in and out, as streams.

In: :class:`RelatedParts` feeds the body to python-multipart's low-level ``MultipartParser``
chunk by chunk as it arrives and hands out each part as an iterator of its bytes, so a part
can go to the object store while it is being read; at most one body chunk is held at a time.
Out: :func:`related_stream` writes parts (each an iterator of chunks) with their headers.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_PART_HEADERS = 16


class MalformedBody(ValueError):
    """The body is not the multipart/related its Content-Type announced."""


@dataclass(frozen=True)
class RelatedType:
    """A ``multipart/related`` Content-Type: its boundary and the ``type`` of its root part."""

    boundary: str
    root_type: str


def related_type(content_type: str | None) -> RelatedType | None:
    """The parameters of a ``multipart/related`` Content-Type; None for any other media type."""
    if not content_type:
        return None
    media, options = parse_options_header(content_type)
    if media.lower() != b"multipart/related":
        return None
    boundary = options.get(b"boundary", b"").decode("latin-1")
    root = options.get(b"type", b"").decode("latin-1").lower()
    return RelatedType(boundary, root)


@dataclass
class Part:
    headers: dict[str, str]
    """Header names in lower case."""
    chunks: Iterator[bytes]

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


class RelatedParts:
    """The parts of a multipart body read from ``body`` (an iterator of chunks) as they come.

    Iterate to get each :class:`Part`; its ``chunks`` must be read before asking for the next
    part (what is left unread is skipped). Raises :class:`MalformedBody` where the body breaks
    the multipart grammar: a wrong boundary, too many or too long part headers, a body that ends
    before the closing delimiter.
    """

    def __init__(self, body: Iterator[bytes], boundary: str) -> None:
        if not boundary or len(boundary) > 70:
            raise MalformedBody("the multipart boundary must be 1 to 70 characters (RFC 2046)")
        self._body = body
        self._events: deque[tuple[str, bytes]] = deque()
        self._field = bytearray()
        self._value = bytearray()
        self._finished = False
        self._parser = MultipartParser(
            boundary.encode("latin-1"),
            {
                "on_part_begin": lambda: self._events.append(("begin", b"")),
                "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": lambda: self._events.append(("headers", b"")),
                "on_part_data": lambda d, s, e: self._events.append(("data", bytes(d[s:e]))),
                "on_part_end": lambda: self._events.append(("part_end", b"")),
                "on_end": lambda: self._events.append(("end", b"")),
            },
            max_header_count=MAX_PART_HEADERS,
        )

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        value = self._value.decode("latin-1").strip()
        self._events.append(("header", f"{name}\0{value}".encode("latin-1")))
        self._field.clear()
        self._value.clear()

    def _next_event(self) -> tuple[str, bytes]:
        while not self._events:
            if self._finished:
                raise MalformedBody("the body ended before the closing multipart delimiter")
            chunk = next(self._body, None)
            try:
                if chunk is None:
                    self._finished = True
                    self._parser.finalize()
                else:
                    self._parser.write(chunk)
            except MultipartParseError as error:
                raise MalformedBody(f"not a multipart body with its boundary: {error}") from None
        return self._events.popleft()

    def __iter__(self) -> Iterator[Part]:
        while True:
            kind, _ = self._next_event()
            if kind == "end":
                return
            if kind != "begin":
                raise MalformedBody(f"unexpected {kind} outside a part")
            headers: dict[str, str] = {}
            while True:
                kind, payload = self._next_event()
                if kind == "headers":
                    break
                name, _, value = payload.decode("latin-1").partition("\0")
                headers[name] = value
            chunks = self._part_data()
            yield Part(headers, chunks)
            for _ in chunks:  # whatever the reader left
                pass

    def _part_data(self) -> Iterator[bytes]:
        while True:
            kind, payload = self._next_event()
            if kind == "part_end":
                return
            if payload:
                yield payload


def new_boundary() -> str:
    return f"emr-hub-{uuid.uuid4().hex}"


def related_stream(
    parts: Iterable[tuple[dict[str, str], Iterable[bytes]]], boundary: str
) -> Iterator[bytes]:
    """A multipart body of ``parts`` (headers, chunks), produced as it is sent."""
    delimiter = f"--{boundary}\r\n".encode("latin-1")
    for headers, chunks in parts:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        yield delimiter + head.encode("latin-1") + b"\r\n"
        yield from chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("latin-1")
