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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from . import dcap, pcs
from .certs import build_chain, cert_name, load_certs, load_pool
from .pck import PckInfo, parse_pck
from .trust import Claim, EvidenceError, compare_value, ReferenceValues, TrustVector, failed, unverified, verified

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


def _p256(raw: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)


def _ecdsa_ok(key, sig_rs: bytes, data: bytes) -> bool:
    try:
        key.verify(encode_dss_signature(int.from_bytes(sig_rs[:32], "big"),
                                        int.from_bytes(sig_rs[32:], "big")), data,
                   ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError):
        return False


class _DcapVerifier:
    kind = "dcap"

    def verify(self, evidence: bytes, *, certs: Sequence[bytes] = (),
               collateral: Mapping[str, Any] | None = None,
               reference: ReferenceValues | None = None,
               simulated_roots: Sequence[bytes] = (),
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

        # -- PCK chain ---------------------------------------------------------------------------
        quote_certs = load_certs(q.qe.cert_data) if q.qe.cert_type == dcap.CERT_PCK_CHAIN else []
        pool = load_pool([*quote_certs, *certs, *(col.certs if col else [])])
        pcks = [c for c in pool if _has_sgx_ext(c)]
        pck_cert = next((c for c in pcks if _ecdsa_ok(c.public_key(), q.qe.qe_report_sig, q.qe.qe_report_raw)),
                        pcks[0] if pcks else None)
        pck_info: PckInfo | None = None
        chain_ok = False
        if pck_cert is None:
            why = (f"certification data type {q.qe.cert_type} holds no PCK certificate"
                   if q.qe.cert_type != dcap.CERT_PCK_CHAIN else "no PCK certificate found")
            tv.add(failed("chain", f"{why}; {_CHAIN_HINT}"), required=True)
        else:
            pck_info = parse_pck(pck_cert)
            res = build_chain(pck_cert, pool, pinned=PINNED_INTEL_ROOTS, simulated=simulated_roots,
                              at=now, vendor="Intel SGX Root CA", fetch_hint=_CHAIN_HINT)
            if not res.ok and res.path:
                test = KNOWN_TEST_ROOTS.get(_root_digest(res.path[-1]))
                if test:
                    res.reason = (f"the chain ends in the {test}: a TEST root with the production "
                                  f"name 'Intel SGX Root CA' but another key — sample data, not "
                                  f"hardware evidence")
            if res.ok:
                chain_ok = True
                if res.simulated:
                    tv.protection = "simulated"
                    tv.add(verified("chain", f"SIMULATED: {res.reason} — no hardware protection; "
                                    "accepted only because your trust policy allows simulation"), required=True)
                else:
                    tv.add(verified("chain", res.reason), required=True)
            else:
                if not explicit_at and "--at" in res.reason:
                    res.reason += " (no --at given: checked against the current time)"
                tv.add(failed("chain", res.reason), required=True)
        if not chain_ok:
            tv.protection = "none"

        # -- QE report, binding, quote signature --------------------------------------------------
        if pck_cert is None:
            tv.add(unverified("qe_report", "no PCK key to check the QE report signature with"), required=True)
        elif _ecdsa_ok(pck_cert.public_key(), q.qe.qe_report_sig, q.qe.qe_report_raw):
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
        try:
            att_key = _p256(q.attestation_key)
            sig_ok = _ecdsa_ok(att_key, q.signature, q.signed_bytes)
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
        self._collateral(tv, q, col, pck_cert, pck_info, pool, simulated_roots, now, explicit_at, ref)

        # -- the TEE's own claims ------------------------------------------------------------
        self._body_claims(tv, q, ref)
        return tv

    # .................................................................................................
    def _collateral(self, tv: TrustVector, q: dcap.Quote, col: pcs.Collateral | None,
                    pck_cert, pck_info: PckInfo | None, pool: list[x509.Certificate],
                    simulated_roots: Sequence[bytes], now: _dt.datetime, explicit_at: bool,
                    ref: ReferenceValues) -> None:
        hint = ("pass --collateral (Intel PCS TCB info + QE identity + CRLs, or dcap-qvl collateral "
                "JSON) to check whether the platform is up to date")
        if col is None or (col.tcb_info is None and col.qe_identity is None and not col.crls):
            tv.add(unverified("tcb_status", f"no collateral: {hint}"))
            tv.add(unverified("qe_identity", f"no collateral: {hint}"))
            tv.add(unverified("crl", "no CRLs given: revocation of the PCK chain was not checked"))
            tv.add(unverified("collateral_time", "no collateral to check"))
            return
        times: list[str] = []
        signer_pool = pool
        # TCB info ----------------------------------------------------------------------------
        tcb_claim: Claim
        if col.tcb_info is None:
            tcb_claim = unverified("tcb_status", f"collateral has no TCB info: {hint}")
        else:
            bad = self._signed_json_problem(col.tcb_info, "TCB info", signer_pool, simulated_roots, now)
            times += self._time_problems(col.tcb_info, "TCB info", now)
            if bad:
                tcb_claim = failed("tcb_status", bad)
            elif pck_info is None:
                tcb_claim = unverified("tcb_status", "no PCK certificate: the platform's TCB is unknown")
            else:
                tcb_claim = self._tcb_status(col.tcb_info.body, q, pck_info, ref)
        tv.add(tcb_claim, required=True)
        # QE identity ----------------------------------------------------------------------
        if col.qe_identity is None:
            tv.add(unverified("qe_identity", f"collateral has no QE identity: {hint}"), required=True)
        else:
            bad = self._signed_json_problem(col.qe_identity, "QE identity", signer_pool, simulated_roots, now)
            times += self._time_problems(col.qe_identity, "QE identity", now)
            tv.add(failed("qe_identity", bad) if bad else self._qe_identity(col.qe_identity.body, q),
                   required=True)
        # CRLs --------------------------------------------------------------------------------
        tv.add(self._crls(col.crls, pool, pck_cert, now, times))
        if times:
            more = ("" if explicit_at else
                    " — no --at was given, so the current time was used; verify archived collateral "
                    "with --at set to a time inside its validity")
            tv.add(failed("collateral_time", "; ".join(times) + more), required=True)
        else:
            tv.add(verified("collateral_time", f"all collateral is valid at {now:%Y-%m-%d %H:%M}Z"),
                   required=True)

    @staticmethod
    def _signed_json_problem(sj: pcs.SignedJson, what: str, pool: list[x509.Certificate],
                             simulated_roots: Sequence[bytes], now: _dt.datetime) -> str:
        signer = next((c for c in pool if not _has_sgx_ext(c)
                       and _ecdsa_ok_cert(c, sj.signature, sj.signed)), None)
        if signer is None:
            return (f"the {what} signature does not verify with any given certificate (altered, or "
                    "the TCB signing certificate chain is missing from the collateral)")
        res = build_chain(signer, pool, pinned=PINNED_INTEL_ROOTS, simulated=simulated_roots,
                          at=now, vendor="Intel SGX Root CA")
        if not res.ok:
            return f"the {what} signer is not trusted: {res.reason}"
        return ""

    @staticmethod
    def _time_problems(sj: pcs.SignedJson, what: str, now: _dt.datetime) -> list[str]:
        if now < sj.issue_date:
            return [f"{what} was issued {sj.issue_date:%Y-%m-%d %H:%M}Z, after {now:%Y-%m-%d %H:%M}Z"]
        if now > sj.next_update:
            return [f"{what} expired {sj.next_update:%Y-%m-%d %H:%M}Z (nextUpdate)"]
        return []

    def _tcb_status(self, info: Mapping[str, Any], q: dcap.Quote, pck: PckInfo,
                    ref: ReferenceValues) -> Claim:
        want_id = "TDX" if self.kind == "tdx" else "SGX"
        if info.get("id", "SGX") != want_id:
            return failed("tcb_status", f"the TCB info is for {info.get('id')}, not {want_id}")
        if bytes.fromhex(info.get("fmspc", "")) != pck.fmspc:
            return failed("tcb_status", f"the TCB info is for FMSPC {info.get('fmspc')}, the PCK for "
                          f"{pck.fmspc.hex().upper()}: fetch the TCB info for this platform")
        if bytes.fromhex(info.get("pceId", "0000")) != pck.pceid:
            return failed("tcb_status", "the TCB info is for another PCE id")
        tee_svn = q.body.tee_tcb_svn if isinstance(q.body, dcap.TdReport) else None
        level = None
        for lvl in info.get("tcbLevels", []):
            t = lvl.get("tcb", {})
            comps = [c.get("svn", 0) for c in t["sgxtcbcomponents"]] if "sgxtcbcomponents" in t \
                else [t.get(f"sgxtcbcomp{i:02d}svn", 0) for i in range(1, 17)]
            if any(p < c for p, c in zip(pck.cpusvn_components, comps)):
                continue
            if pck.pcesvn < t.get("pcesvn", 0):
                continue
            if tee_svn is not None:
                tdx = [c.get("svn", 0) for c in t.get("tdxtcbcomponents", [])]
                start = 2 if tee_svn[1] > 0 else 0  # TDX ≥ 1.5: module SVNs are judged by module identity
                if any(tee_svn[i] < tdx[i] for i in range(start, min(16, len(tdx)))):
                    continue
            level = lvl
            break
        if level is None:
            return failed("tcb_status", "the platform's TCB is below every level in the TCB info "
                          "(status: no matching TCB level): the host must update firmware/microcode")
        status = level.get("tcbStatus", "Unknown")
        advisories = level.get("advisoryIDs", [])
        module = self._module_status(info, q) if tee_svn is not None else None
        if module and module != "UpToDate" and status == "UpToDate":
            status = module
        text = f"{status} (TCB date {level.get('tcbDate', '?')}"
        text += f"; advisories {', '.join(advisories)})" if advisories else ")"
        if status in ref.accept_tcb_status:
            return verified("tcb_status", f"platform TCB status {text}", status=status, advisories=advisories)
        return failed("tcb_status", f"platform TCB status {text} is not accepted by your policy "
                      f"(accepted: {', '.join(ref.accept_tcb_status)}); update the platform or accept "
                      "this status in accept_tcb_status", status=status, advisories=advisories)

    @staticmethod
    def _module_status(info: Mapping[str, Any], q: dcap.Quote) -> str | None:
        body = q.body
        assert isinstance(body, dcap.TdReport)
        version = body.tee_tcb_svn[1]
        if version == 0:
            return None
        ident = next((m for m in info.get("tdxModuleIdentities", [])
                      if m.get("id") == f"TDX_{version:02X}"), None)
        if ident is None:
            return None
        for lvl in ident.get("tcbLevels", []):
            if body.tee_tcb_svn[0] >= lvl.get("tcb", {}).get("isvsvn", 0):
                return lvl.get("tcbStatus")
        return "OutOfDate"

    def _qe_identity(self, ident: Mapping[str, Any], q: dcap.Quote) -> Claim:
        want_id = "TD_QE" if self.kind == "tdx" else "QE"
        if ident.get("id", "QE") != want_id:
            return failed("qe_identity", f"QE identity is for {ident.get('id')}, expected {want_id}")
        qe = q.qe.qe_report
        probs = []
        if bytes.fromhex(ident.get("mrsigner", "")) != qe.mrsigner:
            probs.append("MRSIGNER differs (not Intel's quoting enclave)")
        if ident.get("isvprodid") != qe.isvprodid:
            probs.append(f"ISVPRODID {qe.isvprodid} ≠ {ident.get('isvprodid')}")
        mask = int(ident.get("miscselectMask", "FFFFFFFF"), 16)
        if qe.miscselect & mask != int(ident.get("miscselect", "0"), 16) & mask:
            probs.append("MISCSELECT differs")
        amask = bytes.fromhex(ident.get("attributesMask", "00" * 16))
        attrs = bytes.fromhex(ident.get("attributes", "00" * 16))
        if bytes(a & m for a, m in zip(qe.attributes, amask)) != bytes(a & m for a, m in zip(attrs, amask)):
            probs.append("ATTRIBUTES differ (e.g. a debug QE)")
        if probs:
            return failed("qe_identity", "the quoting enclave is not the one Intel publishes: "
                          + "; ".join(probs))
        status = "OutOfDate"
        for lvl in ident.get("tcbLevels", []):
            if qe.isvsvn >= lvl.get("tcb", {}).get("isvsvn", 0):
                status = lvl.get("tcbStatus", "Unknown")
                break
        if status == "UpToDate":
            return verified("qe_identity", f"Intel's quoting enclave (ISVSVN {qe.isvsvn}), UpToDate")
        return failed("qe_identity", f"quoting enclave ISVSVN {qe.isvsvn} is {status}: the host must "
                      "update the DCAP quoting enclave")

    @staticmethod
    def _crls(crls: list[bytes], pool: list[x509.Certificate], pck_cert, now: _dt.datetime,
              times: list[str]) -> Claim:
        if not crls:
            return unverified("crl", "no CRLs in the collateral: revocation was not checked")
        parsed = []
        for der in crls:
            try:
                crl = x509.load_der_x509_crl(der)
            except ValueError:
                return failed("crl", "a CRL in the collateral does not parse")
            issuer = next((c for c in pool if c.subject == crl.issuer
                           and crl.is_signature_valid(c.public_key())), None)  # type: ignore[arg-type]
            if issuer is None:
                return failed("crl", f"the CRL of '{crl.issuer.rfc4514_string()}' is not signed by a "
                              "known certificate (altered, or its issuer chain is missing)")
            nu = crl.next_update_utc
            if nu is not None and now > nu:
                times.append(f"CRL of {cert_name(issuer)} expired {nu:%Y-%m-%d %H:%M}Z")
            parsed.append(crl)
        chain = [pck_cert] if pck_cert is not None else []
        chain += [c for c in pool if not _has_sgx_ext(c)]
        for crl in parsed:
            for c in chain:
                if c.issuer == crl.issuer and crl.get_revoked_certificate_by_serial_number(c.serial_number):
                    return failed("crl", f"'{cert_name(c)}' (serial {c.serial_number:x}) is REVOKED")
        names = ", ".join(sorted({_name_cn(x.issuer) for x in parsed}))
        return verified("crl", f"{len(parsed)} CRL(s) signed and checked ({names}); nothing in the chain is revoked")

    # .................................................................................................
    def _body_claims(self, tv: TrustVector, q: dcap.Quote, ref: ReferenceValues) -> None:
        """The report body's claims (TD or enclave): each subclass adds its own."""
        raise NotImplementedError(f"{type(self).__name__} must check its report body")


def _name_cn(n: x509.Name) -> str:
    cns = n.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else n.rfc4514_string()


def _has_sgx_ext(c: x509.Certificate) -> bool:
    from .pck import OID_SGX_EXT
    try:
        c.extensions.get_extension_for_oid(OID_SGX_EXT)
        return True
    except x509.ExtensionNotFound:
        return False
    except Exception:
        return False


def _ecdsa_ok_cert(c: x509.Certificate, sig: bytes, data: bytes) -> bool:
    key = c.public_key()
    return isinstance(key, ec.EllipticCurvePublicKey) and _ecdsa_ok(key, sig, data)


def _root_digest(c: x509.Certificate) -> bytes:
    from .certs import spki_sha256
    return spki_sha256(c)


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
        attrs = int.from_bytes(b.td_attributes, "little")
        flags = [n for bit, n in ((28, "SEPT_VE_DISABLE"), (30, "PKS"), (31, "KL"), (63, "PERFMON"))
                 if attrs >> bit & 1]
        text = f"TD attributes {b.td_attributes.hex()} ({', '.join(flags) or 'no optional features'})"
        if b.mrservicetd is not None and any(b.mrservicetd):
            tv.add(unverified("attributes", text + "; a service TD is bound (MRSERVICETD non-zero)"))
        elif not attrs >> 28 & 1:
            tv.add(unverified("attributes", text + "; SEPT_VE_DISABLE is off: the TD handles EPT "
                              "violations itself (check your guest kernel)"))
        else:
            tv.add(verified("attributes", text))
        tv.add(compare_value("measurement", b.mrtd, ref.measurement, "MRTD (initial TD memory)",
                             "the TD firmware/image is not the one you expect"),
               required=ref.measurement is not None)
        self._rtmrs(tv, b, ref)
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
