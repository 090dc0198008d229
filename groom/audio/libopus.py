"""libopus through ctypes: the one copy of the library both directions of the room use.

Why not PyAV's codec: its encoder ignores ``dtx`` (see ``groom.live.tiers``), and its decoder
cannot decode a packet's in-band FEC (LBRR) data for the packet *before* it, which is how a lost
packet from a teacher on a lossy uplink is recovered (``groom.live.ingress``). The library is
the one bundled with the PyAV wheel (always present with aiortc), else the system's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import logging
import os
import weakref

import av
import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48_000
MAX_FRAME_SAMPLES = SAMPLE_RATE * 120 // 1000  # the longest an Opus packet can be

_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    libs_dir = os.path.join(os.path.dirname(os.path.dirname(av.__file__)), "av.libs")
    candidates = sorted(glob.glob(os.path.join(libs_dir, "libopus*.so*")))
    system = ctypes.util.find_library("opus")
    if system:
        candidates.append(system)
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.opus_encoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int,
                                            ctypes.POINTER(ctypes.c_int)]
        lib.opus_encode.restype = ctypes.c_int32
        lib.opus_encode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                    ctypes.c_char_p, ctypes.c_int32]
        lib.opus_encoder_destroy.restype = None
        lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_decode.restype = ctypes.c_int
        lib.opus_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                                    ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.opus_decoder_destroy.restype = None
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_packet_get_nb_samples.restype = ctypes.c_int
        lib.opus_packet_get_nb_samples.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32]
        lib.opus_packet_has_lbrr.restype = ctypes.c_int
        lib.opus_packet_has_lbrr.argtypes = [ctypes.c_char_p, ctypes.c_int32]
        lib.opus_get_version_string.restype = ctypes.c_char_p
        return lib
    raise RuntimeError("libopus not found (neither in the PyAV wheel nor on the system)")


def libopus() -> ctypes.CDLL:
    """The loaded library (loaded on first use)."""
    global _lib
    if _lib is None:
        _lib = _load()
        logger.debug("using %s", _lib.opus_get_version_string().decode())
    return _lib


class OpusDecoder:
    """A mono 48 kHz libopus decoder (stereo packets are downmixed by libopus itself)."""

    def __init__(self) -> None:
        lib = libopus()
        error = ctypes.c_int(0)
        state = lib.opus_decoder_create(SAMPLE_RATE, 1, ctypes.byref(error))
        if error.value != 0 or not state:
            raise RuntimeError(f"opus_decoder_create failed: {error.value}")
        self._state = ctypes.c_void_p(state)
        self._finalizer = weakref.finalize(self, lib.opus_decoder_destroy, self._state)
        self._decode = lib.opus_decode
        self._out = np.zeros(MAX_FRAME_SAMPLES, dtype=np.int16)
        self._out_ptr = self._out.ctypes.data

    @staticmethod
    def samples_in(packet: bytes) -> int:
        """Samples (48 kHz) the packet holds; 0 if it is not a valid Opus packet."""
        count = libopus().opus_packet_get_nb_samples(packet, len(packet), SAMPLE_RATE)
        return max(int(count), 0)

    @staticmethod
    def has_fec(packet: bytes) -> bool:
        """Whether the packet carries in-band FEC (LBRR) data for the packet before it."""
        return bool(libopus().opus_packet_has_lbrr(packet, len(packet)) > 0)

    def decode(self, packet: bytes | None, samples: int, fec: bool = False) -> np.ndarray | None:
        """``samples`` of audio: the packet, its FEC copy of the packet before it (``fec``),
        or concealment (``packet`` None). None if libopus refused the packet."""
        count = self._decode(self._state, packet, len(packet) if packet else 0,
                             self._out_ptr, min(samples, MAX_FRAME_SAMPLES), int(fec))
        if count < 0:
            return None
        return self._out[:count].copy()
