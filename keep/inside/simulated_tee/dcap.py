"""Simulated Intel DCAP quotes (``sim-tdx``, ``sim-sgx``): byte-exact v4/v5 TDX and v3 SGX quotes
signed by a simulated attestation key, whose QE report is signed by a simulated PCK certificate
chained to this installation's simulated "Intel SGX Root CA".  Verified by the same
:mod:`.dcap_verify` code as real quotes; only the pinned root differs.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import fields
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from keepbook.keep.shared.evidence import dcap
from keepbook.keep.shared.evidence.pck import build_pck_extension

from .vendor import _key_pem, make_cert, register_generator, state

SIM_FMSPC = bytes.fromhex("00906ed50000")
SIM_COMPONENTS = (4, 4, 2, 2, 4, 1, 0, 5) + (0,) * 8
SIM_PCESVN = 13
SIM_QE_MRSIGNER = hashlib.sha256(b"keepbook SIMULATED quoting enclave signer").digest()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "keepbook SIMULATED Intel")])


def _gen() -> dict[str, bytes]:
    root = ec.generate_private_key(ec.SECP256R1())
    ca = ec.generate_private_key(ec.SECP256R1())
    pck = ec.generate_private_key(ec.SECP256R1())
    ak = ec.generate_private_key(ec.SECP256R1())
    rn, cn = _name("SIMULATED Intel SGX Root CA"), _name("SIMULATED Intel SGX PCK Platform CA")
    root_der = make_cert(rn, root.public_key(), rn, root, ca=True)
    ca_der = make_cert(cn, ca.public_key(), rn, root, ca=True)
    pck_der = make_cert(_name("SIMULATED Intel SGX PCK Certificate"), pck.public_key(), cn, ca, ca=False,
                        extensions=[build_pck_extension(fmspc=SIM_FMSPC, components=SIM_COMPONENTS,
                                                        pcesvn=SIM_PCESVN, ppid=secrets.token_bytes(16))])
    return {"root.key": _key_pem(root), "root.der": root_der, "ca.key": _key_pem(ca),
            "ca.der": ca_der, "pck.key": _key_pem(pck), "pck.der": pck_der, "ak.key": _key_pem(ak)}


register_generator("tdx", _gen)
register_generator("sgx", _gen)


def _rs(key, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def make_quote(kind: str, report_data: bytes, measurement: bytes, *, debug: bool = False,
               **overrides: Any) -> tuple[bytes, list[bytes]]:
    """A signed quote and the DER chain (PCK, PCK CA, root).  ``overrides``: ``version`` (TDX 4 or
    5), ``user_data``, ``trailing`` and any field of :class:`dcap.TdReport` /
    :class:`dcap.EnclaveReport` (e.g. ``rtmrs``, ``mrsigner``, ``isvsvn``)."""
    st = state(kind)
    files = st["files"]
    version = overrides.pop("version", 4 if kind == "tdx" else 3)
    user_data = overrides.pop("user_data", bytes(20))
    trailing = overrides.pop("trailing", b"")
    ak_pub = st["ak_key"].public_key().public_bytes(serialization.Encoding.X962,
                                                    serialization.PublicFormat.UncompressedPoint)[1:]
    if kind == "tdx":
        names = {f.name for f in fields(dcap.TdReport)}
        attrs = (1 << 28) | (1 if debug else 0)
        v: dict[str, Any] = dict(tee_tcb_svn=bytes([3, 0, 5]) + bytes(13), mrtd=bytes(measurement),
                                 td_attributes=attrs.to_bytes(8, "little"),
                                 xfam=bytes.fromhex("e742060000000000"), report_data=bytes(report_data))
        if version >= 5:
            v.update(tee_tcb_svn2=bytes(16), mrservicetd=bytes(48))
        body_type = 3 if version >= 5 else 2
        tee = dcap.TEE_TDX
        qe_prodid = 2
    elif kind == "sgx":
        names = {f.name for f in fields(dcap.EnclaveReport)}
        flags = 0x05 | (0x02 if debug else 0)
        v = dict(cpusvn=bytes(SIM_COMPONENTS), attributes=flags.to_bytes(8, "little") + (0xE7).to_bytes(8, "little"),
                 mrenclave=bytes(measurement), mrsigner=hashlib.sha256(b"sim enclave signer").digest(),
                 report_data=bytes(report_data))
        body_type, tee, qe_prodid = 1, dcap.TEE_SGX, 1
        if version != 3:
            raise ValueError("simulated SGX quotes are version 3")
    else:
        raise ValueError(f"no DCAP simulator for {kind!r}")
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown {kind} quote field(s): {', '.join(sorted(unknown))}")
    v.update(overrides)
    body = dcap.TdReport(**v) if kind == "tdx" else dcap.EnclaveReport(**v)
    header = dcap.QuoteHeader(version, dcap.ATT_KEY_ECDSA_P256, tee if version > 3 else 0,
                              0 if version > 3 else 11, 0 if version > 3 else SIM_PCESVN,
                              dcap.INTEL_QE_VENDOR, user_data)
    auth = hashlib.sha256(b"qe auth " + ak_pub).digest()
    qe = dcap.EnclaveReport(cpusvn=bytes(SIM_COMPONENTS), attributes=bytes.fromhex("11000000000000000000000000000000"),
                            mrenclave=hashlib.sha256(b"sim qe").digest(), mrsigner=SIM_QE_MRSIGNER,
                            isvprodid=qe_prodid, isvsvn=8,
                            report_data=hashlib.sha256(ak_pub + auth).digest() + bytes(32))
    qe_raw = qe.to_bytes()
    chain_pem = b"".join(_pem(files[n]) for n in ("pck.der", "ca.der", "root.der"))
    cert = dcap.QeCertData(qe_raw, _rs(st["pck_key"], qe_raw), auth, dcap.CERT_PCK_CHAIN, chain_pem,
                           wrapped=version > 3)
    unsigned = dcap.Quote(header, body_type, body, bytes(64), ak_pub, cert)
    quote = dcap.Quote(header, body_type, body, _rs(st["ak_key"], unsigned.signed_bytes), ak_pub, cert,
                       trailing=trailing)
    return quote.to_bytes(), [files["pck.der"], files["ca.der"], files["root.der"]]
