"""CRC-32C of a byte stream assembled from the checksums of its parts (zlib's crc32_combine, for CRC-32C).

google-crc32c computes the CRC-32C of bytes at hand; :func:`combine` gives the CRC-32C of ``a + b`` from the
checksums of ``a`` and ``b`` and the length of ``b``, without the bytes. The store uses it to checksum a run's
stored objects from the checksums taken as each object was written (:mod:`.recording`), so completing a run
does not read back everything it wrote; the result is the very value a read-back computes.

The arithmetic is zlib's (crc32.c, ``multmodp`` and ``x2nmodp``) with the Castagnoli polynomial: a CRC is a
polynomial over GF(2) in reflected bit order, and appending ``n`` bytes multiplies it by ``x^(8n)`` modulo
the polynomial.
"""

from __future__ import annotations

from functools import lru_cache

import google_crc32c
import numpy as np
import numpy.typing as npt

POLYNOMIAL = 0x82F63B78
"""The Castagnoli polynomial, reflected."""
_ONE = 1 << 31
"""The polynomial 1 (x^0) in reflected bit order."""


def _multiply(a: int, b: int) -> int:
    """a * b modulo the polynomial (reflected)."""
    product, bit = 0, _ONE
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ POLYNOMIAL if b & 1 else b >> 1
    return product


def _powers() -> list[int]:
    """x^(2^k) modulo the polynomial for k = 0..63."""
    powers = [_ONE >> 1]  # x^1
    for _ in range(63):
        powers.append(_multiply(powers[-1], powers[-1]))
    return powers


_POWERS = _powers()


@lru_cache(maxsize=256)
def _shift(length: int) -> int:
    """x^(8 * length) modulo the polynomial: what appending ``length`` bytes multiplies a CRC by."""
    result, k = _ONE, 3  # 8 * length = length * 2^3
    while length:
        if length & 1:
            result = _multiply(_POWERS[k], result)
        length >>= 1
        k += 1
    return result


def combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """The CRC-32C of ``a + b`` from the CRC-32C of ``a``, that of ``b`` and the length of ``b`` in bytes."""
    if length_b < 0:
        raise ValueError(f"length_b must be >= 0, got {length_b}")
    return (_multiply(_shift(length_b), crc_a) ^ crc_b) if length_b else crc_a


def value(data: bytes | npt.NDArray[np.uint8]) -> int:
    """CRC-32C of ``data`` (bytes, or a contiguous uint8 array: no copy)."""
    return int(google_crc32c.value(data))


class RunningCrc32c:
    """hashlib-like running CRC-32C that also takes parts by their checksum (:meth:`append`)."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes) -> None:
        self._value = google_crc32c.extend(self._value, data)

    def append(self, crc: int, length: int) -> None:
        """Continue the stream with ``length`` bytes whose CRC-32C is ``crc``."""
        self._value = combine(self._value, crc, length)

    def hexdigest(self) -> str:
        return f"{self._value:08x}"
