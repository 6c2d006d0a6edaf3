"""The simulated vendor: root keys and byte-exact simulated evidence (``sim-snp``, ``sim-tdx``,
``sim-sgx``, ``sim-cca``).  Inside the Keep — it plays the part of the TEE firmware and holds the simulated
roots' private keys.

Each installation generates its own simulated roots once, in the directory
:func:`keepbook.keep.shared.evidence.simulated_roots.sim_roots_dir` names, files mode 0600,
never inside the repository.  Evidence made here is parsed and verified by the *same* verifier
code as real evidence; only the root differs, and a verifier accepts that root only when the
caller passes its digest in ``simulated_roots`` (the user's trust policy allows simulation) — the
result is then labelled SIMULATED.  The public side (the root certificates, their digests) is
:mod:`keepbook.keep.shared.evidence.simulated_roots`.

Two processes may race to create the roots: each writes a complete set into a private temporary
directory and renames it into place; the loser discards its set and loads the winner's.
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import shutil
import tempfile
import threading

from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from keepbook.keep.shared import certificates, facts
from keepbook.keep.shared.evidence import snp
from keepbook.keep.shared.evidence.simulated_roots import COMPLETE, KINDS, evidence_kind, sim_roots_dir, simulated_root_digests
from keepbook.keep.shared.evidence.snp_certs import key_info_extensions

_LOCK = threading.RLock()
_CACHE: dict[tuple[str, str], dict[str, Any]] = {}   # (root dir, kind) → loaded keys/certs



# -- certificate building -----------------------------------------------------------------------

_NOT_BEFORE = _dt.datetime(2024, 1, 1, tzinfo=_dt.timezone.utc)
_NOT_AFTER = _dt.datetime(2049, 12, 31, tzinfo=_dt.timezone.utc)


def _name(cn: str, org: str) -> x509.Name:
    return certificates.name(cn, org)


def make_cert(subject: x509.Name, pub: Any, issuer: x509.Name, issuer_key: Any, *, ca: bool,
              extensions: Any = (), pss: bool = False, hash_alg: Any = None,
              not_before: _dt.datetime = _NOT_BEFORE, not_after: _dt.datetime = _NOT_AFTER) -> bytes:
    """A certificate of a simulated chain (long-lived, like the vendors'), by the one builder."""
    return certificates.build_certificate(subject, pub, issuer, issuer_key, ca=ca,
                                          extensions=extensions, pss=pss, hash_alg=hash_alg,
                                          not_before=not_before, not_after=not_after)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(pem: bytes):
    # These are this installation's own keys, generated here and read back from 0600 files:
    # OpenSSL's RSA consistency check (≈120 ms per 3072-bit key) guards against malformed keys
    # from elsewhere and is skipped — it was most of a simulated Keep's first attestation.
    return serialization.load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=True)


class _State(dict):
    """A kind's files, with each ``<name>_key`` loaded from ``<name>.key`` on first use: the Keep
    needs only the signing keys, the client only the root certificate."""

    def __missing__(self, name: str):
        if not name.endswith("_key") or name[:-4] + ".key" not in self["files"]:
            raise KeyError(name)
        with _LOCK:
            if name not in self:
                dict.__setitem__(self, name, _load_key(self["files"][name[:-4] + ".key"]))
            return dict.__getitem__(self, name)


# -- per-kind root generation -------------------------------------------------------------------

def _gen_snp() -> dict[str, bytes]:
    ark = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    ask = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    org = "keepbook SIMULATED AMD"
    ark_name, ask_name = _name("SIMULATED ARK", org), _name("SIMULATED ASK", org)
    ark_der = make_cert(ark_name, ark.public_key(), ark_name, ark, ca=True, pss=True)
    ask_der = make_cert(ask_name, ask.public_key(), ark_name, ark, ca=True, pss=True)
    vcek = ec.generate_private_key(ec.SECP384R1())
    return {"ark.key": _key_pem(ark), "ark.der": ark_der, "ask.key": _key_pem(ask),
            "ask.der": ask_der, "vcek.key": _key_pem(vcek), "chip_id.bin": secrets.token_bytes(64)}


_GENERATORS: dict[str, Callable[[], dict[str, bytes]]] = {"sev-snp": _gen_snp}


def register_generator(kind: str, gen: Callable[[], dict[str, bytes]]) -> None:
    """Used by the DCAP and CCA simulator modules to add ``tdx``/``sgx``/``cca`` roots."""
    _GENERATORS[kind] = gen


def _files(kind: str) -> dict[str, bytes]:
    """This installation's root files for ``kind``, generated on first use (race-safe)."""
    if kind not in _GENERATORS:
        _load_simulators()
    if kind not in _GENERATORS:
        raise ValueError(f"no simulator for evidence kind {kind!r} (known: {', '.join(KINDS)})")
    base = sim_roots_dir()
    target = base / kind
    if not (target / COMPLETE).exists():
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        files = _GENERATORS[kind]()
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=base))
        try:
            for name, data in {**files, COMPLETE: b"1\n"}.items():
                fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            try:
                os.rename(tmp, target)         # atomic: the whole set appears at once
            except OSError:
                if not (target / COMPLETE).exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}


def _load_simulators() -> None:
    from keepbook.keep.inside.simulated_tee import cca, dcap  # noqa: F401  (register their roots)


def state(kind: str) -> dict[str, Any]:
    """Loaded keys and certificates of ``kind`` (cached in-process)."""
    key = (str(sim_roots_dir()), kind)
    with _LOCK:
        st = _CACHE.get(key)
        if st is None:
            st = _State(files=_files(kind))
            _CACHE[key] = st
        return st


#: the keys a kind's evidence is signed with (loaded lazily; a pooled Keep loads them early)
SIGNING_KEYS = {"sev-snp": ("vcek_key", "ask_key"), "tdx": ("ak_key", "pck_key"),
                "sgx": ("ak_key", "pck_key"), "cca": ("platform_key",)}


def load_signing_keys(kind: str) -> None:
    """Load (making them first if needed) the keys ``kind``'s evidence is signed with, so the
    first attestation does not pay for it."""
    st = state(evidence_kind(kind))
    for key in SIGNING_KEYS[evidence_kind(kind)]:
        st[key]


def ensure_roots(kind: str) -> list[bytes]:
    """Make this installation's simulated root for ``kind`` if it does not exist yet; return its
    digest (as :func:`~keepbook.keep.shared.evidence.simulated_roots.simulated_root_digests`)."""
    state(evidence_kind(kind))
    return simulated_root_digests(kind)


# -- evidence ---------------------------------------------------------------------------------

def make_evidence(kind: str, report_data: bytes, measurement: bytes, *, debug: bool = False,
                  **overrides: Any) -> tuple[bytes, list[bytes]]:
    """Byte-exact simulated evidence and its DER certificate chain (leaf first).

    ``overrides`` set further fields of the evidence (for SNP any :class:`snp.SnpReport` field,
    plus ``reported_tcb`` as a dict; for TDX/SGX see :mod:`.dcap`, for CCA :mod:`.cca`)."""
    kind = evidence_kind(kind)
    if len(report_data) != 64:
        raise ValueError(f"report_data must be 64 bytes, got {len(report_data)}")
    want = facts.measurement_length(kind)
    if len(measurement) != want:
        raise ValueError(f"measurement for {kind} must be {want} bytes, got {len(measurement)}")
    if kind == "sev-snp":
        return _make_snp(report_data, measurement, debug, overrides)
    from keepbook.keep.inside.simulated_tee import cca, dcap
    if kind == "cca":
        return cca.make_token(report_data, measurement, debug=debug, **overrides)
    return dcap.make_quote(kind, report_data, measurement, debug=debug, **overrides)


_VCEKS: dict[tuple, bytes] = {}
SIM_SNP_PRODUCT = "Genoa"


def _make_snp(report_data: bytes, measurement: bytes, debug: bool,
              overrides: dict[str, Any]) -> tuple[bytes, list[bytes]]:
    st = state("sev-snp")
    version = overrides.pop("version", 5)
    tcb_in = overrides.pop("reported_tcb", {"bootloader": 10, "tee": 0, "snp": 27, "microcode": 88})
    if isinstance(tcb_in, (bytes, bytearray)):
        tcb = snp.TcbVersion.from_bytes(bytes(tcb_in), turin=False)
    else:
        tcb = snp.TcbVersion(**{k: v for k, v in tcb_in.items() if k != "fmc"})
    raw_tcb = tcb.to_bytes()
    chip_id = overrides.pop("chip_id", st["files"]["chip_id.bin"])
    policy = overrides.pop("policy", snp.POLICY_SMT | snp.POLICY_RESERVED_ONE)
    policy = (policy | snp.POLICY_DEBUG) if debug else (policy & ~snp.POLICY_DEBUG)
    fields: dict[str, Any] = dict(
        version=version, policy=policy, report_data=bytes(report_data),
        measurement=bytes(measurement), current_tcb=raw_tcb, reported_tcb=raw_tcb,
        committed_tcb=raw_tcb, launch_tcb=raw_tcb, chip_id=chip_id,
        report_id=secrets.token_bytes(32), current_major=1, current_minor=55, current_build=21,
        committed_major=1, committed_minor=55, committed_build=21, platform_info=0x25)
    if version >= 3:
        fields.update(cpuid_fam_id=0x19, cpuid_mod_id=0x11, cpuid_step=0x01)
    fields.update(overrides)
    rep = snp.build(**fields)
    sig = st["vcek_key"].sign(rep.signed_bytes, ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(sig)
    rep = rep.with_signature(r, s)
    return rep.raw, [_sim_vcek(st, tcb, chip_id), st["files"]["ask.der"], st["files"]["ark.der"]]


def _sim_vcek(st: dict[str, Any], tcb: snp.TcbVersion, chip_id: bytes) -> bytes:
    key = (id(st), tcb, bytes(chip_id))
    with _LOCK:
        der = _VCEKS.get(key)
        if der is None:
            ask = x509.load_der_x509_certificate(st["files"]["ask.der"])
            exts = key_info_extensions(product_name=SIM_SNP_PRODUCT, tcb=tcb.as_dict(),
                                       hwid=bytes(chip_id))
            der = make_cert(_name("SEV-VCEK", "keepbook SIMULATED AMD"),
                            st["vcek_key"].public_key(), ask.subject, st["ask_key"], ca=False,
                            extensions=exts, pss=True)
            _VCEKS[key] = der
        return der


def reset_cache() -> None:
    """Forget loaded roots (tests that switch ``KEEPBOOK_SIM_ROOTS``)."""
    with _LOCK:
        _CACHE.clear()
        _VCEKS.clear()


__all__ = ["make_evidence", "ensure_roots", "reset_cache", "state", "make_cert",
           "register_generator", "KINDS"]

