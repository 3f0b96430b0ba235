"""libjpeg-turbo 3's TurboJPEG API through ctypes: header reading and decoding of a region of a JPEG only.

Why this and not a Python JPEG package: the one thing the fast data path needs, decoding only the crop's region
(``tj3SetCroppingRegion``: libjpeg-turbo skips the IDCT and colour conversion of the columns left and right of the
region, and stops after its last row), is exposed by no maintained Python binding; the TurboJPEG 3 C API is small and
stable, and its handle is opaque, so a binding needs no struct layouts beyond two 2- and 4-int structs. The library
comes from the ``turbojpeg`` wheel (the ``fast-decode`` extra; it bundles a self-contained libturbojpeg 3 that
needs only libc), else from a system libturbojpeg that has the TurboJPEG 3 API (libjpeg-turbo >= 3.0).
docs/performance.md ("Decoding only the crop") has the measurements behind the choice.

:func:`load` returns a :class:`TurboJPEG` or raises :class:`Unavailable` with the reason; a process uses one handle
per thread (TurboJPEG handles are not thread-safe), created lazily, so DataLoader workers forked after the parent
used the library get their own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
import threading
from typing import NamedTuple, Optional

import numpy as np

__all__ = ["Header", "TurboJPEG", "Unavailable", "load", "mcu_size"]

# TurboJPEG 3 constants (turbojpeg.h of libjpeg-turbo 3.0)
_TJINIT_DECOMPRESS = 1
_TJPARAM_SUBSAMP, _TJPARAM_JPEGWIDTH, _TJPARAM_JPEGHEIGHT, _TJPARAM_PRECISION, _TJPARAM_COLORSPACE = 4, 5, 6, 7, 8
_TJPARAM_PROGRESSIVE, _TJPARAM_ARITHMETIC, _TJPARAM_LOSSLESS = 12, 14, 15
_TJPF_RGB, _TJPF_GRAY = 0, 6
TJCS_YCBCR, TJCS_GRAY = 1, 2  # TJCS_RGB = 0, TJCS_CMYK = 3, TJCS_YCCK = 4
# iMCU size per chroma subsampling TJSAMP_444, 422, 420, GRAY, 440, 411, 441 (tjMCUWidth/tjMCUHeight)
_MCU_W = (8, 16, 16, 8, 8, 32, 8)
_MCU_H = (8, 8, 16, 8, 16, 8, 32)


class Unavailable(RuntimeError):
    """No libturbojpeg with the TurboJPEG 3 API could be loaded (the message says why)."""


class Header(NamedTuple):
    width: int
    height: int
    subsamp: int  # TJSAMP_*, -1 (TJSAMP_UNKNOWN) for layouts TurboJPEG cannot decode to RGB
    colorspace: int  # TJCS_*
    precision: int  # bits per sample (8 for everything this path decodes)
    progressive: bool
    arithmetic: bool
    lossless: bool


class _Region(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]


class _Scale(ctypes.Structure):
    _fields_ = [("num", ctypes.c_int), ("denom", ctypes.c_int)]


def mcu_size(subsamp: int) -> tuple[int, int]:
    """(width, height) of an iMCU at full scale for a TJSAMP_* value: a cropping region's left edge is a multiple
    of the width (scaled by the decode scale)."""
    return _MCU_W[subsamp], _MCU_H[subsamp]


def _candidates() -> list[str]:
    paths = []
    spec = importlib.util.find_spec("turbojpeg")  # the wheel's module is not imported: only its bundled library
    if spec is not None and spec.origin:
        site = os.path.dirname(spec.origin)
        paths += sorted(glob.glob(os.path.join(site, "turbojpeg.libs", "libturbojpeg*.so*")))
    system = ctypes.util.find_library("turbojpeg")
    if system:
        paths.append(system)
    return paths


class TurboJPEG:
    """The decompression functions of one loaded libturbojpeg."""

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self.path = path
        self._lib = lib
        lib.tj3Init.restype = ctypes.c_void_p
        lib.tj3Init.argtypes = [ctypes.c_int]
        lib.tj3Destroy.argtypes = [ctypes.c_void_p]
        lib.tj3Get.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.tj3GetErrorStr.restype = ctypes.c_char_p
        lib.tj3GetErrorStr.argtypes = [ctypes.c_void_p]
        lib.tj3DecompressHeader.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.tj3SetCroppingRegion.argtypes = [ctypes.c_void_p, _Region]
        lib.tj3SetScalingFactor.argtypes = [ctypes.c_void_p, _Scale]
        lib.tj3Decompress8.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        self._local = threading.local()

    def _handle(self) -> int:
        pid = os.getpid()
        if getattr(self._local, "pid", None) != pid:  # a forked worker must not share its parent's handle
            handle = self._lib.tj3Init(_TJINIT_DECOMPRESS)
            if not handle:
                raise MemoryError("tj3Init failed")
            self._local.handle, self._local.pid = handle, pid
            self._local.parsed = None
        return self._local.handle

    def _error(self, handle: int, what: str) -> OSError:
        message = self._lib.tj3GetErrorStr(handle) or b"unknown error"
        return OSError(f"{what}: {message.decode(errors='replace')}")

    def header(self, data: bytes) -> Header:
        """The JPEG's size and coding; OSError for data TurboJPEG cannot parse."""
        handle, lib = self._handle(), self._lib
        self._local.parsed = None
        if lib.tj3DecompressHeader(handle, data, len(data)) != 0:
            raise self._error(handle, "JPEG header")
        self._local.parsed = data  # decode() of the same bytes next need not parse them again
        get = lib.tj3Get
        return Header(
            width=get(handle, _TJPARAM_JPEGWIDTH),
            height=get(handle, _TJPARAM_JPEGHEIGHT),
            subsamp=get(handle, _TJPARAM_SUBSAMP),
            colorspace=get(handle, _TJPARAM_COLORSPACE),
            precision=get(handle, _TJPARAM_PRECISION),
            progressive=bool(get(handle, _TJPARAM_PROGRESSIVE)),
            arithmetic=bool(get(handle, _TJPARAM_ARITHMETIC)),
            lossless=bool(get(handle, _TJPARAM_LOSSLESS)),
        )

    def decode(self, data: bytes, region: tuple[int, int, int, int], scale: int = 1, gray: bool = False) -> np.ndarray:
        """The pixels of ``region`` = (x, y, w, h), in the image scaled by 1/``scale`` (1, 2, 4 or 8), as an
        (h, w, 3) RGB (or (h, w, 1) with ``gray``) uint8 array. ``x`` must be a multiple of the scaled iMCU width
        (:func:`mcu_size` / ``scale``); ``x + w`` and ``y + h`` at most the scaled size. Any warning (a truncated
        or corrupt file) is an OSError: such files go to the caller's fallback, whose decoder judges them."""
        handle, lib = self._handle(), self._lib
        parsed, self._local.parsed = self._local.parsed, None
        if parsed is not data and lib.tj3DecompressHeader(handle, data, len(data)) != 0:
            raise self._error(handle, "JPEG header")
        if lib.tj3SetScalingFactor(handle, _Scale(1, scale)) != 0:
            raise self._error(handle, f"scale 1/{scale}")
        x, y, w, h = region
        if lib.tj3SetCroppingRegion(handle, _Region(x, y, w, h)) != 0:
            raise self._error(handle, f"cropping region {region}")
        channels = 1 if gray else 3
        out = np.empty((h, w, channels), dtype=np.uint8)
        fmt = _TJPF_GRAY if gray else _TJPF_RGB
        if lib.tj3Decompress8(handle, data, len(data), out.ctypes.data, w * channels, fmt) != 0:
            raise self._error(handle, "JPEG decode")
        return out


_loaded: Optional[TurboJPEG] = None
_reason: Optional[str] = None


def load() -> TurboJPEG:
    """The process's libturbojpeg (loaded once); :class:`Unavailable` says why there is none."""
    global _loaded, _reason
    if _loaded is not None:
        return _loaded
    if _reason is not None:
        raise Unavailable(_reason)
    tried = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            lib.tj3SetCroppingRegion  # noqa: B018 (libturbojpeg < 3.0 lacks the TurboJPEG 3 API)
        except (OSError, AttributeError) as e:
            tried.append(f"{path}: {e}")
            continue
        _loaded = TurboJPEG(lib, path)
        return _loaded
    _reason = (
        "no libturbojpeg with the TurboJPEG 3 API"
        + (f" ({'; '.join(tried)})" if tried else "")
        + ": install the fast-decode extra (pip install 'partialconv[fast-decode]', the turbojpeg wheel)"
    )
    raise Unavailable(_reason)
