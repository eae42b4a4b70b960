"""The bytes of a FITS file before astropy parses them: the size limit, whole-file gzip/bzip2 decompression
(bounded), the FITS signature, truncation and the header's card structure; each failure becomes the specific
:class:`~ood_core.errors.InvalidInputError` that names the file and says why (:mod:`.fits` reads the image)."""

from __future__ import annotations

import bz2
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ood_core.errors import (
    CorruptFitsError,
    ImageTooLargeError,
    InvalidInputError,
    MissingInputError,
    NotFitsError,
    TruncatedFitsError,
)

_HEADER_ALLOWANCE = 1 << 24  # bytes of headers and other HDUs allowed beside the largest image
_FITS_MAGIC = b"SIMPLE  ="
_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
IMAGE_HDU_TYPES = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)


def _content_limit(max_pixels: int) -> int:
    """Most bytes a file may hold (after whole-file decompression): the largest float64 image plus headers."""
    return max_pixels * 8 + _HEADER_ALLOWANCE


def too_large(path: str, what: str, max_pixels: int) -> ImageTooLargeError:
    """The error for a file whose image (``what``) is over the size limit."""
    return ImageTooLargeError(
        path, f"{what}, above the limit of {max_pixels} pixels ({_content_limit(max_pixels)} bytes of file); "
              "cut it into tiles first or raise the limit (OOD_MAX_PIXELS)"
    )


def read_bytes(path: str, max_pixels: int) -> bytes:
    """The whole file, refused before reading when it cannot hold an image under the limit."""
    file = Path(path)
    if not file.exists():
        raise MissingInputError(path, "no such file or directory")
    if not file.is_file():
        raise MissingInputError(path, "not a regular file")
    try:
        size = file.stat().st_size
        if size > _content_limit(max_pixels):
            raise too_large(path, f"file is {size} bytes", max_pixels)
        return file.read_bytes()
    except OSError as exc:
        raise MissingInputError(path, f"cannot be read ({exc.strerror or exc})") from exc


def _gunzip(raw: bytes, limit: int) -> bytearray | None:
    """Every gzip member of ``raw``; None as soon as the output would pass ``limit`` bytes."""
    out = bytearray()
    data = raw
    while data.startswith(_GZIP_MAGIC):
        inflater = zlib.decompressobj(wbits=31)
        out += inflater.decompress(data, limit + 1 - len(out))
        if len(out) > limit or inflater.unconsumed_tail:
            return None
        if not inflater.eof:
            raise EOFError("compressed stream ends early")
        data = inflater.unused_data
    return out


def _bunzip(raw: bytes, limit: int) -> bytearray | None:
    """Every bzip2 stream of ``raw``; None as soon as the output would pass ``limit`` bytes."""
    out = bytearray()
    data = raw
    while data.startswith(_BZIP2_MAGIC):
        inflater = bz2.BZ2Decompressor()
        out += inflater.decompress(data, max_length=limit + 1 - len(out))
        if len(out) > limit or (not inflater.eof and not inflater.needs_input):
            return None
        if not inflater.eof:
            raise EOFError("compressed stream ends early")
        data = inflater.unused_data
    return out


def _check_primary_size(path: str, head: bytes, max_pixels: int) -> None:
    """Refuse early when the first decompressed bytes already show a primary image above the limit."""
    end = _find_end(head, 0)
    if end is None:
        return
    try:
        header = fits.Header.fromstring(head[:end].decode("ascii"))
        shape = [int(header.get(f"NAXIS{axis}", 0)) for axis in range(int(header.get("NAXIS", 0)), 0, -1)]
    except Exception:  # a damaged header is reported by the full read
        return
    pixels = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if pixels > max_pixels:
        raise too_large(path, f"image is {'x'.join(map(str, shape))} = {pixels} pixels", max_pixels)


def decompress(path: str, raw: bytes, max_pixels: int) -> bytes | bytearray:
    """Undo whole-file gzip/bzip2 compression in memory, never past the size limit (a small file may expand
    to gigabytes); tile compression is handled by astropy."""
    limit = _content_limit(max_pixels)
    try:
        if raw.startswith(_GZIP_MAGIC):
            _check_primary_size(path, zlib.decompressobj(wbits=31).decompress(raw, 1 << 16), max_pixels)
            content = _gunzip(raw, limit)
        elif raw.startswith(_BZIP2_MAGIC):
            _check_primary_size(path, bz2.BZ2Decompressor().decompress(raw, max_length=1 << 16), max_pixels)
            content = _bunzip(raw, limit)
        else:
            return raw
    except (EOFError, OSError, ValueError, zlib.error) as exc:
        reason = f"file truncated: compressed stream is damaged or ends early ({exc})"
        raise TruncatedFitsError(path, reason) from exc
    if content is None:
        raise too_large(path, f"the {len(raw)}-byte compressed file expands to more than {limit} bytes",
                         max_pixels)
    return content


def check_fits_start(path: str, content: bytes | bytearray, compressed: bool) -> None:
    """NotFitsError unless the (decompressed) content starts as a FITS file does."""
    if not content:
        what = "decompresses to nothing" if compressed else "empty file (0 bytes)"
        raise NotFitsError(path, f"{what}, not a FITS file")
    if not content.startswith(_FITS_MAGIC):
        raise NotFitsError(path, f"not a FITS file (first bytes {content[:20]!r}, expected {_FITS_MAGIC!r})")


def _describe_hdu(index: int, hdu: Any) -> str:
    name = hdu.name or "(unnamed)"
    if isinstance(hdu, IMAGE_HDU_TYPES):
        shape = hdu.shape
        kind = "empty" if not shape or 0 in shape else "image " + "x".join(str(n) for n in shape)
    else:
        kind = str(hdu.header.get("XTENSION", type(hdu).__name__)).strip()
    return f"{index} {name} {kind}"


def hdu_listing(hdul: fits.HDUList) -> str:
    """The file's HDUs in one line, for error messages."""
    return ", ".join(_describe_hdu(i, hdu) for i, hdu in enumerate(hdul))


def _stored_data_bytes(raw_header: fits.Header) -> int:
    """Unpadded size of an HDU's data as stored (FITS standard 4.4.1); for tile-compressed HDUs, the table."""
    naxis = int(raw_header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    elements = 1
    for axis in range(1, naxis + 1):
        elements *= int(raw_header.get(f"NAXIS{axis}", 0))
    bits = abs(int(raw_header.get("BITPIX", 8)))
    gcount = int(raw_header.get("GCOUNT", 1))
    pcount = int(raw_header.get("PCOUNT", 0))
    return bits // 8 * gcount * (pcount + elements)


def check_not_truncated(path: str, hdul: fits.HDUList, content: bytes | bytearray) -> None:
    """TruncatedFitsError when the file ends before its last HDU's data does."""
    n_bytes = len(content)
    for index in range(len(hdul)):
        info = hdul.fileinfo(index)
        if info is None:
            continue
        # Parse the header as stored: a CompImageHDU's .header is the decompressed image's, not the table's.
        header_start, data_start = int(info["hdrLoc"]), int(info["datLoc"])
        raw_header = fits.Header.fromstring(content[header_start:data_start].decode("ascii", "replace"))
        needed = data_start + _stored_data_bytes(raw_header)
        if needed > n_bytes:
            raise TruncatedFitsError(
                path, f"file truncated: HDU {index} needs {needed} bytes, the file has {n_bytes}"
            )


_CARD = 80
_BLOCK = 2880
_END_CARD = b"END" + b" " * 77
_VALID_BITPIX = (8, 16, 32, 64, -32, -64)
_STRUCTURAL = re.compile(r"^(BITPIX|NAXIS\d*|PCOUNT|GCOUNT|ZNAXIS\d*|ZBITPIX)$")


def _find_end(content: bytes | bytearray, start: int) -> int | None:
    """Offset of the END card of the header starting at ``start`` (cards are 80-byte aligned), or None."""
    pos = content.find(_END_CARD, start)
    while pos >= 0 and (pos - start) % _CARD:
        pos = content.find(_END_CARD, pos + 1)
    return None if pos < 0 else pos


def _card_problem(index: int, number: int, image: bytes) -> str | None:
    """Why one stored header card is unusable, or None."""
    where = f"header card {number} of HDU {index}"
    if any(byte < 0x20 or byte > 0x7E for byte in image):
        return f"{where} is corrupt: it holds bytes that are not printable ASCII ({image[:24]!r})"
    try:
        card = fits.Card.fromstring(image.decode("ascii"))
        keyword, value = card.keyword, card.value
    except Exception as exc:  # astropy raises several types for unparsable cards
        return f"{where} is corrupt: {image.decode('ascii').rstrip()!r} ({exc})"
    if not _STRUCTURAL.match(keyword):
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{where} ({keyword}) is corrupt: value {value!r} is not an integer"
    if keyword in ("BITPIX", "ZBITPIX") and value not in _VALID_BITPIX:
        return f"{where} ({keyword}) is corrupt: {value} is not one of {list(_VALID_BITPIX)}"
    if keyword not in ("BITPIX", "ZBITPIX") and (value < 0 or (keyword == "NAXIS" and value > 999)):
        return f"{where} ({keyword}) is corrupt: {value} is out of range"
    return None


def _header_problem(path: str, content: bytes | bytearray) -> InvalidInputError | None:
    """Walk the headers as stored: the first missing END card, corrupt card or short data; None if sound."""
    offset, index = 0, 0
    while offset < len(content) and content[offset:offset + 6] not in (b"", b"\0" * 6):
        end = _find_end(content, offset)
        if end is None:
            return TruncatedFitsError(path, f"file truncated: the header of HDU {index} has no END card "
                                            f"(the file ends at {len(content)} bytes)")
        cards = content[offset:end]
        for number in range(len(cards) // _CARD):
            problem = _card_problem(index, number + 1, bytes(cards[number * _CARD:(number + 1) * _CARD]))
            if problem:
                return CorruptFitsError(path, problem)
        data_start = -(-(end + _CARD) // _BLOCK) * _BLOCK
        stored = _stored_data_bytes(fits.Header.fromstring(cards.decode("ascii")))
        if data_start + stored > len(content):
            return TruncatedFitsError(path, f"file truncated: HDU {index} needs {data_start + stored} bytes, "
                                            f"the file has {len(content)}")
        offset = data_start + -(-stored // _BLOCK) * _BLOCK
        index += 1
    return None


def _exception_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def unreadable(path: str, content: bytes | bytearray, exc: Exception, decoding: bool) -> InvalidInputError:
    """The error to report when astropy failed on a file: what the stored headers show, else astropy's words."""
    try:
        found = _header_problem(path, content)
    except Exception:  # the walk itself tripped: fall back on astropy's message
        found = None
    if found is not None:
        return found
    what = "image data cannot be decoded" if decoding else "file is corrupt, astropy cannot read it"
    return CorruptFitsError(path, f"{what} ({_exception_name(exc)}: {exc})")
