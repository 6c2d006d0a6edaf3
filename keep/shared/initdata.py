"""Init-data of a Confidential Containers pod: the document the host hands the pod's guest at
launch, and the digest of it that the TEE binds into the evidence — the SEV-SNP report's
HOST_DATA (32 bytes), the TDX quote's MRCONFIGID (48 bytes).  Shared core: no secrets, no I/O.

The format, as specified and as implemented:

* the Initdata Specification (confidential-containers/trustee, ``kbs/docs/initdata.md``): a
  key-value document with ``version = "0.1.0"``, ``algorithm`` (``sha256``, ``sha384`` or
  ``sha512``) and a ``[data]`` table of strings; CoCo encodes it as TOML;
* Kata Containers' implementation (``src/libs/kata-types/src/initdata.rs``,
  ``calculate_initdata_digest`` and ``adjust_digest``): the digest is ``algorithm`` over the
  document's bytes *as delivered*, then cut to the TEE field's length, or padded with zero
  bytes to it — SNP 32, TDX 48, CCA 64;
* the pod carries the document in the annotation
  ``io.katacontainers.config.hypervisor.cc_init_data`` as base64 of its gzip
  (Kata's ``docs/how-to/how-to-use-the-kata-agent-policy.md``).

Because the digest is over the bytes, the host and the client must render the same document
byte for byte: :meth:`InitData.render` is deterministic (sorted keys, one quoting rule), and
both sides call it.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import tomllib
import zlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

VERSION = "0.1.0"
ALGORITHMS = ("sha256", "sha384", "sha512")
#: the TEE field the digest lands in, and its length in bytes
FIELD_BYTES: Mapping[str, int] = MappingProxyType({"snp": 32, "tdx": 48, "cca": 64})
ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"
#: a document larger than this is refused (an agent policy and a few small files fit easily)
MAX_DOCUMENT_BYTES = 256 * 1024


class InitDataError(ValueError):
    """The document or annotation is not init-data; the message names the failed check."""


@dataclass(frozen=True)
class InitData:
    algorithm: str = "sha384"
    data: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise InitDataError(f"init-data algorithm {self.algorithm!r} is not one of "
                                f"{', '.join(ALGORITHMS)}")
        for k, v in self.data.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise InitDataError("init-data [data] must map strings to strings")
        object.__setattr__(self, "data", MappingProxyType(dict(self.data)))

    def render(self) -> str:
        """The TOML document, the same bytes for the same contents on every machine."""
        lines = [f'version = "{VERSION}"', f'algorithm = "{self.algorithm}"', "", "[data]"]
        for key in sorted(self.data):
            lines.append(f"{_basic(key)} = {_value(self.data[key])}")
        return "\n".join(lines) + "\n"

    def digest(self) -> bytes:
        return document_digest(self.render())

    def tee_field(self, platform: str) -> bytes:
        """What the TEE field (``platform``: snp, tdx, cca) of a guest launched with this
        document holds."""
        return tee_field(self.render(), platform)


def _basic(s: str) -> str:
    """A TOML basic string (every control character escaped)."""
    out = []
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(s: str) -> str:
    """A multi-line literal string when the text allows it (readable: a Rego policy stays as
    written), else a basic string."""
    literal_ok = ("'''" not in s and not s.endswith("'") and "\r" not in s
                  and all(ch in "\n\t" or (ord(ch) >= 0x20 and ord(ch) != 0x7F) for ch in s))
    return f"'''\n{s}'''" if literal_ok else _basic(s)


def parse(document: str) -> InitData:
    """An init-data TOML document → :class:`InitData` (version, algorithm and data checked)."""
    if len(document.encode()) > MAX_DOCUMENT_BYTES:
        raise InitDataError(f"init-data document larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = tomllib.loads(document)
    except tomllib.TOMLDecodeError as exc:
        raise InitDataError(f"init-data is not valid TOML: {exc}") from None
    if doc.get("version") != VERSION:
        raise InitDataError(f"init-data version {doc.get('version')!r} is not {VERSION!r}")
    data = doc.get("data", {})
    if not isinstance(data, dict):
        raise InitDataError("init-data [data] must be a table")
    unknown = set(doc) - {"version", "algorithm", "data"}
    if unknown:
        raise InitDataError(f"init-data has unknown key(s) {', '.join(sorted(unknown))}")
    return InitData(algorithm=doc.get("algorithm", ""), data=data)


def document_digest(document: str) -> bytes:
    """``algorithm`` (named in the document) over the document's UTF-8 bytes, as they are."""
    algorithm = parse(document).algorithm
    return hashlib.new(algorithm, document.encode()).digest()


def tee_field(document: str, platform: str) -> bytes:
    """The digest cut to, or zero-padded to, the length of ``platform``'s field."""
    try:
        size = FIELD_BYTES[platform]
    except KeyError:
        raise InitDataError(f"no init-data field on {platform!r}; known: "
                            f"{', '.join(FIELD_BYTES)}") from None
    return document_digest(document)[:size].ljust(size, b"\0")


def encode_annotation(document: str) -> str:
    """The pod annotation's value: base64 of the gzip of the document (mtime 0, so the same
    document always gives the same annotation)."""
    return base64.b64encode(gzip.compress(document.encode(), mtime=0)).decode()


def decode_annotation(value: str) -> str:
    """The document in an annotation value (bounded: a gzip bomb is refused)."""
    try:
        packed = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InitDataError("the init-data annotation is not base64") from None
    try:
        d = zlib.decompressobj(wbits=31)
        text = d.decompress(packed, MAX_DOCUMENT_BYTES + 1)
        if len(text) > MAX_DOCUMENT_BYTES or d.unconsumed_tail:
            raise InitDataError(f"the init-data annotation unpacks to more than "
                                f"{MAX_DOCUMENT_BYTES} bytes")
        if not d.eof:
            raise InitDataError("the init-data annotation's gzip stream is cut short")
    except zlib.error as exc:
        raise InitDataError(f"the init-data annotation is not gzip ({exc})") from None
    try:
        document = text.decode()
    except UnicodeDecodeError:
        raise InitDataError("the init-data document is not UTF-8") from None
    parse(document)
    return document
