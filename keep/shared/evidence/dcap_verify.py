"""TDX and SGX (DCAP ECDSA quote) verifiers: Intel SGX Root CA (pinned by key) → PCK chain →
QE report → attestation key → quote; with collateral also TCB status, QE identity and CRLs.

The order follows Intel's Quote Verification Library: PCK chain, QE report signature (by the
PCK key), QE report data == SHA-256(attestation key ‖ QE auth data), quote signature (by the
attestation key), then collateral: TCB info and QE identity signed by Intel's TCB signing key,
their validity at ``at``, CRLs, the TCB level the PCK's SVNs reach.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from typing import Any, Mapping, Sequence

from cryptography import x509

from . import dcap, dcap_collateral, pcs, sigcache, vendor_roots
from .certs import build_chain, der_of, load_certs, load_pool, spki_sha256
from .ecdsa_rs import p256_key, p256_ok
from .pck import PckInfo, has_sgx_ext, parse_pck
from .trust import (Claim, EvidenceError, ReferenceValues, SimulatedRoots, TrustVector,
                    compare_value, failed, relaxable, unverified, verified)

#: SHA-256 of the DER SubjectPublicKeyInfo of the production Intel SGX Root CA.
PINNED_INTEL_ROOTS: dict[bytes, str] = {
    bytes.fromhex("a0af031289f5d5d4132f9186068a7fc13628633ba235777472e29b6b6c67a49e"): "Intel SGX Root CA",
}
#: Known *test* roots that carry the same name (Intel QVL sample data) — recognised only to say so.
KNOWN_TEST_ROOTS: dict[bytes, str] = {
    bytes.fromhex("b4709133063051f70429aa41e5bd26c6efa0b3cced38fb5935bcf3e27df8fc1a"): "Intel QVL sample TDX test root",
    bytes.fromhex("6a3b29fc4ae6ef0e0a9241dc63aeb2a361b15af97a634803dcda3d7358a3e38a"): "Intel QVL sample SGX test root",
}

_CHAIN_HINT = ("the quote carries no complete PCK chain; pass the PCK certificate and its issuer "
               "chain (Intel PCS) with --certs")


class _DcapVerifier:
    kind = "dcap"

    def verify(self, evidence: bytes, *, certs: Sequence[bytes] = (),
               collateral: Mapping[str, Any] | None = None,
               reference: ReferenceValues | None = None,
               simulated_roots: SimulatedRoots = (),
               at: _dt.datetime | None = None) -> TrustVector:
        q = dcap.parse(evidence)
        if q.kind != self.kind:
            raise EvidenceError(f"this is a {q.kind.upper()} quote, not {self.kind.upper()}")
        col = pcs.as_collateral(collateral)
        ref = reference or ReferenceValues()
        explicit_at = at is not None
        now = at or _dt.datetime.now(_dt.timezone.utc)
        if now.tzinfo is None:
            now = now.replace(tzinfo=_dt.timezone.utc)
        tv = TrustVector(kind=self.kind, protection="hardware")
        tv.fields.extend(dcap.explain(q))

        # -- PCK chain (Intel's root ships with keepbook: a chain without it still verifies) -----
        quote_certs = load_certs(q.qe.cert_data) if q.qe.cert_type == dcap.CERT_PCK_CHAIN else []
        pool = load_pool([*quote_certs, *certs, *(col.certs if col else []),
                          *vendor_roots.roots("intel", PINNED_INTEL_ROOTS)])
        pcks = [c for c in pool if has_sgx_ext(c)]
        pck_cert = next((c for c in pcks if _qe_report_signed_by(q, c)), pcks[0] if pcks else None)
        pck_info: PckInfo | None = None
        chain_ok = False
        paths: list[list[x509.Certificate]] = []
        if pck_cert is None:
            why = (f"certification data type {q.qe.cert_type} holds no PCK certificate"
                   if q.qe.cert_type != dcap.CERT_PCK_CHAIN else "no PCK certificate found")
            tv.add(failed("chain", f"{why}; {_CHAIN_HINT}"), required=True)
        else:
            pck_info = parse_pck(pck_cert)
            res = build_chain(pck_cert, pool, pinned=PINNED_INTEL_ROOTS, simulated=simulated_roots,
                              at=now, vendor="Intel SGX Root CA", fetch_hint=_CHAIN_HINT)
            if not res.ok and res.path:
                test = KNOWN_TEST_ROOTS.get(spki_sha256(res.path[-1]))
                if test:
                    res.reason = (f"the chain ends in the {test}: a TEST root with the production "
                                  f"name 'Intel SGX Root CA' but another key — sample data, not "
                                  f"hardware evidence")
            if res.ok:
                chain_ok = True
                paths.append(res.path)
                if res.simulated:
                    tv.protection = "simulated"
                    tv.add(verified("chain", f"SIMULATED: {res.reason} — no hardware protection; "
                                    "accepted only because your trust policy allows simulation",
                                    **res.detail), required=True)
                else:
                    tv.add(verified("chain", res.reason, **res.detail), required=True)
            else:
                if not explicit_at and "--at" in res.reason:
                    res.reason += " (no --at given: checked against the current time)"
                tv.add(failed("chain", res.reason, **res.detail), required=True)
        if not chain_ok:
            tv.protection = "none"

        # -- QE report, binding, quote signature --------------------------------------------------
        if pck_cert is None:
            tv.add(unverified("qe_report", "no PCK key to check the QE report signature with"), required=True)
        elif _qe_report_signed_by(q, pck_cert):
            tv.add(verified("qe_report", "the quoting enclave's report is signed by the PCK key"), required=True)
        else:
            tv.add(failed("qe_report", "the QE report signature does not verify with the PCK key: "
                          "the QE report or the PCK certificate was altered/swapped"), required=True)
        qe = q.qe.qe_report
        want = hashlib.sha256(q.attestation_key + q.qe.qe_auth_data).digest()
        if qe.report_data[:32] == want and not any(qe.report_data[32:]):
            tv.add(verified("qe_binding", "QE report data = SHA-256(attestation key ‖ QE auth data): "
                            "the attestation key belongs to this quoting enclave"), required=True)
        else:
            tv.add(failed("qe_binding", "QE report data does not bind the attestation key: the key "
                          "or the QE auth data was replaced"), required=True)
        try:   # the quote's own signature: new for every quote, never remembered
            sig_ok = p256_ok(p256_key(q.attestation_key), q.signature, q.signed_bytes)
        except ValueError:
            sig_ok = False
        if sig_ok:
            tv.add(verified("signature", "quote signature by the attestation key verifies over "
                            "header and report body"), required=True)
        else:
            tv.add(failed("signature", "the quote signature does not verify: header or report body "
                          "was altered"), required=True)
        if q.trailing:
            tv.add(unverified("trailing_data", f"{len(q.trailing)} bytes after the quote are covered "
                              "by no signature and were ignored"))

        # -- collateral -----------------------------------------------------------------------
        ctx = dcap_collateral.QuoteContext(self.kind, q, pck_info, pool, paths, PINNED_INTEL_ROOTS,
                                           simulated_roots)
        dcap_collateral.add_claims(tv, ctx, col, now, explicit_at, ref)

        # -- the TEE's own claims ------------------------------------------------------------
        self._body_claims(tv, q, ref)
        return tv

    def _body_claims(self, tv: TrustVector, q: dcap.Quote, ref: ReferenceValues) -> None:
        """The report body's claims (TD or enclave): each subclass adds its own."""
        raise NotImplementedError(f"{type(self).__name__} must check its report body")


def _qe_report_signed_by(q: dcap.Quote, pck: x509.Certificate) -> bool:
    """The QE report is the same in every quote from this platform: remembered by its bytes."""
    return sigcache.remember("p256", (der_of(pck), q.qe.qe_report_raw, q.qe.qe_report_sig),
                             lambda: p256_ok(pck.public_key(), q.qe.qe_report_sig, q.qe.qe_report_raw))


def _debug_claim(debug: bool, ref: ReferenceValues, what: str) -> Claim:
    if not debug:
        return verified("debug", f"the {what} is not in debug mode")
    if ref.allow_debug:
        return verified("debug", f"the {what} IS in debug mode (its memory is readable by the host) — "
                        "accepted because your policy allows debug")
    return failed("debug", f"the {what} is in debug mode: the host can read and change its memory; "
                  "launch it without debug (or allow_debug in your policy)")


class TdxVerifier(_DcapVerifier):
    kind = "tdx"

    def _body_claims(self, tv: TrustVector, q: dcap.Quote, ref: ReferenceValues) -> None:
        b = q.body
        assert isinstance(b, dcap.TdReport)
        tv.add(_debug_claim(b.debug, ref, "TD"), required=True)
        attrs = b.attributes
        shown = f"TD attributes {b.td_attributes.hex()} ({', '.join(b.attribute_names()) or 'none set'})"
        reserved = attrs & dcap.TD_RESERVED
        tv.add(relaxable(
            "td_attributes_reserved", not reserved, f"{shown}: no reserved bit set",
            f"reserved TD attribute bits are set ({reserved:#018x}): a TDX module or host that sets "
            "bits this verifier cannot judge", "launch the TD with the documented attributes only",
            ref.allow_reserved_td_attributes, "allow_reserved_td_attributes"), required=True)
        tv.add(relaxable(
            "sept_ve_disable", bool(attrs & dcap.TD_SEPT_VE_DISABLE),
            "SEPT_VE_DISABLE is set: the host cannot make the TD take #VE on pending pages",
            "SEPT_VE_DISABLE (TD attribute bit 28) is clear: the host can inject EPT-violation #VE "
            "exceptions into the TD, a known attack path", "launch the TD with SEPT_VE_DISABLE set",
            ref.allow_sept_ve, "allow_sept_ve"), required=True)
        if b.mrservicetd is None:
            tv.add(verified("mrservicetd", "TDX 1.0 quote: no service TD can be bound"), required=True)
        else:
            tv.add(relaxable(
                "mrservicetd", not any(b.mrservicetd), "MRSERVICETD is zero: no service TD is bound",
                f"a service TD is bound to this TD (MRSERVICETD {b.mrservicetd.hex()[:16]}…): it can "
                "read or change the TD's state", "launch the TD without a bound service TD",
                ref.allow_service_td, "allow_service_td"), required=True)
        tv.add(compare_value("measurement", b.mrtd, ref.measurement, "MRTD (initial TD memory)",
                             "the TD firmware/image is not the one you expect"),
               required=ref.measurement is not None)
        self._rtmrs(tv, b, ref)
        tv.add(compare_value("mrconfigid", b.mrconfigid, ref.mrconfigid, "MRCONFIGID",
                             "the TD was launched with other host-supplied configuration "
                             "(a Confidential Containers pod: other init-data)"),
               required=ref.mrconfigid is not None)
        tv.add(compare_value("report_data", b.report_data, ref.report_data, "report data",
                             "the quote answers a different request (replayed, or for another key)"),
               required=ref.report_data is not None)

    @staticmethod
    def _rtmrs(tv: TrustVector, b: dcap.TdReport, ref: ReferenceValues) -> None:
        want = list(ref.rtmrs or [])
        if not any(w is not None for w in want):
            tv.add(unverified("rtmrs", "RTMR0–3 reported; no expected values given"))
            return
        bad = [f"RTMR{i}" for i, w in enumerate(want[:4]) if w is not None and b.rtmrs[i] != bytes(w)]
        if bad:
            tv.add(failed("rtmrs", f"{', '.join(bad)} differ from the expected values: the boot chain "
                          "or application measured into them is not the one you expect"), required=True)
        else:
            tv.add(verified("rtmrs", "the given RTMRs match"), required=True)


class SgxVerifier(_DcapVerifier):
    kind = "sgx"

    def _body_claims(self, tv: TrustVector, q: dcap.Quote, ref: ReferenceValues) -> None:
        b = q.body
        assert isinstance(b, dcap.EnclaveReport)
        tv.add(_debug_claim(b.debug, ref, "enclave"), required=True)
        flags = int.from_bytes(b.attributes[:8], "little")
        if not flags & 1:
            tv.add(failed("attributes", "enclave ATTRIBUTES.INIT is not set: not an initialised enclave"))
        else:
            tv.add(verified("attributes", f"enclave attributes {b.attributes.hex()} "
                            f"({'64-bit' if flags & 4 else '32-bit'}, {'KSS' if flags & 0x80 else 'no KSS'})"))
        tv.add(compare_value("measurement", b.mrenclave, ref.measurement, "MRENCLAVE",
                             "the enclave code is not the one you expect"), required=ref.measurement is not None)
        tv.add(compare_value("mrsigner", b.mrsigner, ref.mrsigner, "MRSIGNER",
                             "the enclave was signed by another key"), required=ref.mrsigner is not None)
        tv.add(compare_value("report_data", b.report_data, ref.report_data, "report data",
                             "the quote answers a different request (replayed, or for another key)"),
               required=ref.report_data is not None)
