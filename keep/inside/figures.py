"""Released figures, inside the Keep: a PNG the cell hands to ``keep.release`` is decoded to
pixels and encoded again by the Keep, so only pixels leave — no text or other ancillary chunks,
nothing after IEND, no second image behind the signature (a "figure" once was checked only for
the PNG signature, so raw CSV bytes behind it left the Keep).

The codec is Pillow (PyPI ``pillow``): well kept, fast (C), with wheels for every platform the
Keep runs on, and it runs in the Keep's own (native) Python — the wasmldr — never in the cell's
interpreter.  Its input is bounded before decoding: the released value's size limit bounds the
compressed bytes, :data:`MAX_PIXELS` the decoded ones (checked from the header, before any pixel
is decoded)."""

from __future__ import annotations

import io
import warnings

#: the largest figure the Keep decodes (2048 × 2048 RGBA is 16 MiB of pixels)
MAX_PIXELS = 2048 * 2048
_MODES = {"1": "L", "L": "L", "LA": "LA", "P": "RGBA", "PA": "RGBA", "RGB": "RGB", "RGBA": "RGBA",
          "I": "L", "I;16": "L", "I;16B": "L", "I;16L": "L", "F": "L"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FigureError(ValueError):
    """The bytes are not a figure the Keep releases; the message says why."""


def reencode_png(data: bytes) -> bytes:
    """The pixels of the PNG ``data``, as a new PNG with only IHDR, IDAT and IEND."""
    from PIL import Image

    if not data.startswith(PNG_SIGNATURE):
        raise FigureError("a figure release must carry a PNG image")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise FigureError(f"the figure is {width}×{height} pixels, over the limit of "
                                      f"{MAX_PIXELS:,} pixels")
                img.load()
                mode = _MODES.get(img.mode)
                if mode is None:
                    raise FigureError(f"PNG pixel mode {img.mode} is not one the Keep re-encodes")
                pixels = img.convert(mode) if img.mode != mode else img.copy()
        except FigureError:
            raise
        except Exception as exc:  # Pillow raises several types for broken images
            raise FigureError(f"the PNG does not decode ({type(exc).__name__})") from None
    out = io.BytesIO()
    pixels.save(out, format="PNG")  # no pnginfo, no icc profile, no exif: pixels only
    return out.getvalue()


def png_chunks(data: bytes) -> list[str]:
    """The chunk types of a PNG, in order (what tests and the docs check a re-encoding by)."""
    import struct

    pos, out = len(PNG_SIGNATURE), []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        out.append(kind.decode("latin-1"))
        pos += 12 + length
        if kind == b"IEND":
            break
    if pos != len(data):
        out.append(f"<{len(data) - pos} trailing bytes>")
    return out
