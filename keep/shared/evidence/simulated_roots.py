"""Where this installation's simulated vendor roots live, and their public halves.

The simulated vendors (``keep/inside/simulated_tee/``) generate their root keys once per
installation under ``platformdirs.user_data_dir("keepbook")/sim-roots/<kind>/`` (or
``$KEEPBOOK_SIM_ROOTS/<kind>/``), files mode 0600, and sign ``sim-*`` evidence with them.  This
module reads only the certificates — never a private key — so a client can trust this
installation's simulated roots when its trust policy allows simulation, and a keep manager can
announce the roots its Keeps sign with (``keepbook keepmgr`` prints their fingerprints; its
``contracts`` answer carries their certificates).  A verifier accepts a simulated root only when
the caller passes its digest in ``simulated_roots``, and labels the result SIMULATED.
"""

from __future__ import annotations

import os
from pathlib import Path

from .certs import format_fingerprint, spki_sha256

#: evidence kinds that have a simulated vendor
KINDS = ("sev-snp", "tdx", "sgx", "cca")
#: the certificate files of each kind's chain, intermediate first, root last (CCA: the simulated
#: platform key's self-signed certificate)
CHAIN_FILES = {"sev-snp": ("ask.der", "ark.der"), "tdx": ("ca.der", "root.der"),
               "sgx": ("ca.der", "root.der"), "cca": ("platform.der",)}
COMPLETE = "COMPLETE"  # written last: a kind's directory is usable only with it


def sim_roots_dir() -> Path:
    env = os.environ.get("KEEPBOOK_SIM_ROOTS")
    if env:
        return Path(env)
    import platformdirs
    return Path(platformdirs.user_data_dir("keepbook")) / "sim-roots"


def evidence_kind(name: str) -> str:
    """``sim-snp``/``snp`` → ``sev-snp``; ``sim-tdx`` → ``tdx``; kinds pass through."""
    if name in ("sim-snp", "snp"):
        return "sev-snp"
    return name.removeprefix("sim-")


def _complete_dir(kind: str) -> Path | None:
    d = sim_roots_dir() / kind
    return d if (d / COMPLETE).exists() else None


def simulated_ca_certs(kind: str) -> list[bytes]:
    """DER intermediate and root certificates of this installation's simulated chain for
    ``kind`` ([] when its vendor has not made them yet)."""
    kind = evidence_kind(kind)
    d = _complete_dir(kind) if kind in CHAIN_FILES else None
    return [(d / f).read_bytes() for f in CHAIN_FILES[kind]] if d else []


def simulated_root_digests(kind: str) -> list[bytes]:
    """SPKI SHA-256 of this installation's simulated root for ``kind`` ([] when none exists);
    pass it to a verifier's ``simulated_roots`` only when the user's trust policy allows
    simulation."""
    chain = simulated_ca_certs(kind)
    return [spki_sha256(chain[-1])] if chain else []


def root_certificate(kind: str) -> bytes | None:
    """DER root certificate of this installation's simulated ``kind`` (None until made)."""
    chain = simulated_ca_certs(kind)
    return chain[-1] if chain else None


def root_fingerprint(kind: str) -> str | None:
    """``sha256:…`` of this installation's simulated root for ``kind`` (None until made): what
    a keep manager's users compare before they accept it."""
    digests = simulated_root_digests(kind)
    return format_fingerprint(digests[0]) if digests else None
