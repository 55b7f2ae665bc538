"""A health card as a QR code: the ``shc:/`` numeric form, drawn as PNG and SVG.

The SMART Health Cards spec puts the JWS in one QR code as ``shc:/`` followed by two digits
per character (its code point minus 45: every base64url character and the dots fall in
45..122, so 00..77). The prefix goes in a byte segment and the digits in a numeric one, which
packs 3⅓ bits a character: a JWS of at most 1,195 characters fits version 22 at error
correction L, the spec's limit. Chunking a card over several codes is deprecated by the spec
and not offered; a longer JWS is refused (:class:`CardTooLarge`): the compact card
(:func:`~emr_hub.healthbook.credentials.issue_compact_card`) is cut to fit.
"""

from __future__ import annotations

import io

import segno

from emr_hub.healthbook.credentials import MAX_QR_JWS

PREFIX = "shc:/"
MAX_VERSION = 22
ERROR_CORRECTION = "L"
SMALLEST = ord("-")
PNG_SCALE = 4
"""Pixels a module: a version-22 code (105 modules and the quiet zone) is about 450 px."""
BORDER = 4
"""The quiet zone the QR standard asks for, in modules."""


class CardTooLarge(ValueError):
    """The JWS does not fit one QR code of version 22 at error correction L."""


def shc_numeric(jws: str) -> str:
    """``shc:/`` and the digits of ``jws``."""
    if len(jws) > MAX_QR_JWS:
        raise CardTooLarge(f"a JWS of {len(jws)} characters does not fit one QR code")
    digits = []
    for char in jws:
        value = ord(char) - SMALLEST
        if not 0 <= value <= 77:
            raise ValueError("a JWS holds only base64url characters and dots")
        digits.append(f"{value:02d}")
    return PREFIX + "".join(digits)


def qr_images(jws: str) -> tuple[bytes, str]:
    """The QR code of the card ``jws`` as (PNG bytes, SVG text)."""
    numeric = shc_numeric(jws)
    # A list of contents makes one segment each, in the mode each needs (byte, numeric).
    code = segno.make(
        [PREFIX, numeric[len(PREFIX) :]], error=ERROR_CORRECTION, micro=False, boost_error=False
    )
    if code.version > MAX_VERSION:  # pragma: no cover - 1,195 characters always fit 22
        raise CardTooLarge(f"the card needs QR version {code.version}")
    png = io.BytesIO()
    code.save(png, kind="png", scale=PNG_SCALE, border=BORDER)
    svg = io.BytesIO()
    code.save(svg, kind="svg", scale=PNG_SCALE, border=BORDER, xmldecl=False, svgns=True)
    return png.getvalue(), svg.getvalue().decode()
