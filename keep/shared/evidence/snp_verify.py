"""SEV-SNP verifier: AMD ARK (pinned by key) → ASK → VCEK/VLEK → report, then the report's claims.

Checks what AMD's and Google's verifiers check (go-sev-guest ``verify``, virtee ``snpguest``):
the certificate chain with RSASSA-PSS SHA-384, the report signature (ECDSA P-384 over
0x000–0x29F), that the VCEK was issued for this chip (hwID == CHIP_ID) and this TCB (its SPL
extensions == REPORTED_TCB), zeroed reserved bytes, and the user's policy (debug, migration
agent, SMT, VMPL, minimum TCB, measurement, host data, report data).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from . import azure_hcl, pcs, snp, vendor_roots
from .certs import build_chain, cert_name, check_crls, load_pool
from .snp_certs import AmdKeyInfo, is_amd_key_cert, parse_key_info
from .trust import (ReferenceValues, SimulatedRoots, Status, TrustVector, compare_value, failed,
                    unverified, verified)

KIND = "sev-snp"

#: SHA-256 of the DER SubjectPublicKeyInfo of AMD's root keys (ARK), per product.  Computed from
#: the ARK certificates AMD KDS serves (/vcek/v1/<product>/cert_chain).
PINNED_ARKS: dict[bytes, str] = {
    bytes.fromhex("9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9"): "AMD ARK-Milan",
    bytes.fromhex("429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831"): "AMD ARK-Genoa",
    bytes.fromhex("4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08"): "AMD ARK-Turin",
}

_PSS_OID = x509.ObjectIdentifier("1.2.840.113549.1.1.10")
_TCB_KEYS = ("bootloader", "tee", "snp", "microcode", "fmc")


def _kds_hint(rep: snp.SnpReport, product: str | None) -> str:
    prod = product or rep.product or "Milan|Genoa|Turin"
    tcb = rep.tcb("reported_tcb")
    hwid = rep.chip_id[:8] if tcb.turin else rep.chip_id
    q = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    if tcb.turin:
        q = f"fmcSPL={tcb.fmc}&" + q
    return f"https://kdsintf.amd.com/vcek/v1/{prod}/{hwid.hex()}?{q}"


class SnpVerifier:
    kind = KIND

    def verify(self, evidence: bytes, *, certs: Sequence[bytes] = (),
               collateral: Mapping[str, Any] | None = None,
               reference: ReferenceValues | None = None,
               simulated_roots: SimulatedRoots = (),
               at: _dt.datetime | None = None) -> TrustVector:
        hcl = azure_hcl.parse(evidence) if azure_hcl.looks_like(evidence) else None
        rep = hcl.report if hcl else snp.parse(evidence)   # EvidenceError → unusable input
        col = pcs.as_collateral(collateral)                # AMD CRLs (and certificates)
        pool = load_pool([*certs, *(col.certs if col else []),   # EvidenceError for garbage
                          *vendor_roots.roots("amd", PINNED_ARKS)])
        ref = reference or ReferenceValues()
        tv = TrustVector(kind=KIND, protection="hardware")
        if hcl:
            tv.fields.extend(azure_hcl.explain(hcl))
        tv.fields.extend(snp.explain(rep))
        tv.add(_check_signer_info(rep), required=True)

        # -- which key signed, and which certificate is it -----------------------------------
        leaf, info, missing = _pick_leaf(rep, pool)
        chain_ok = False
        product = None
        path: list[x509.Certificate] = []
        if rep.signing_key == "none":
            tv.add(failed("chain", "the report says it is not signed (SIGNING_KEY = none): it proves "
                          "nothing; ask the guest for a VCEK- or VLEK-signed report"), required=True)
        elif rep.signing_key not in ("VCEK", "VLEK"):
            tv.add(failed("chain", f"SIGNING_KEY {rep.signing_key_value} is reserved: no AMD key "
                          "signs such a report"), required=True)
        elif leaf is None:
            tv.add(failed("chain", missing), required=True)
        else:
            res = build_chain(leaf, pool, pinned=PINNED_ARKS, simulated=simulated_roots, at=at,
                              vendor="AMD ARK",
                              fetch_hint="pass AMD's ASK and ARK (KDS /vcek/v1/<product>/cert_chain) "
                                         "with --certs")
            if res.ok:
                bad_alg = [cert_name(c) for c in res.path if c.signature_algorithm_oid != _PSS_OID
                           or not isinstance(c.signature_hash_algorithm, hashes.SHA384)]
                product = res.root_label.split("ARK-")[-1] if "ARK-" in res.root_label else None
                mixed = _product_mismatch(rep, info, product)
                if bad_alg:
                    tv.add(failed("chain", f"{', '.join(bad_alg)} not signed with RSASSA-PSS SHA-384 "
                                  f"as AMD's chain is: not an AMD chain"), required=True)
                elif mixed:
                    tv.add(failed("chain", mixed + "; use the certificate chain for the report's "
                                  "product"), required=True)
                else:
                    chain_ok = True
                    path = res.path
                    if res.simulated:
                        tv.protection = "simulated"
                        tv.add(verified("chain", f"SIMULATED: {res.reason} — no hardware protection; "
                                        f"accepted only because your trust policy allows simulation",
                                        **res.detail), required=True)
                    else:
                        tv.add(verified("chain", res.reason, **res.detail), required=True)
            else:
                tv.add(failed("chain", res.reason, **res.detail), required=True)
        if leaf is not None and info is not None:
            tv.add(_check_key_cert(leaf, info, product, simulated=tv.protection == "simulated"),
                   required=True)
        else:
            tv.add(unverified("key_cert", "no VCEK/VLEK certificate to check"), required=True)
        tv.add(_check_crl(col, path, at), required=False)

        # -- the report signature ------------------------------------------------------------
        tv.add(_check_signature(rep, leaf, chain_ok), required=True)

        # -- VCEK ↔ chip and TCB ---------------------------------------------------------------
        if info is not None and info.key_type == "VCEK":
            tv.add(_check_chip(rep, info), required=not rep.mask_chip_key)
        elif info is not None:
            tv.add(unverified("chip_id", f"signed by a VLEK (cloud provider {info.csp_id or '?'}): "
                              "the key is not tied to one chip, so chip_id is not checked"))
        else:
            tv.add(unverified("chip_id", "no VCEK to compare the chip id with"), required=True)
        if info is not None:
            tv.add(_check_vcek_tcb(rep, info, product), required=True)
        else:
            tv.add(unverified("vcek_tcb", "no VCEK/VLEK to compare the reported TCB with"),
                   required=True)

        if not chain_ok:
            tv.protection = "none"  # nothing trusted vouches for this report
        tv.add(_check_reserved(rep), required=True)
        tv.add(_check_debug(rep, ref), required=True)
        tv.add(_check_policy(rep, ref), required=True)
        tv.add(_check_vmpl(rep, ref), required=ref.vmpl is not None)
        tv.add(_check_min_tcb(rep, ref), required=ref.min_tcb is not None)
        tv.add(compare_value("measurement", rep.measurement, ref.measurement,
                             "launch measurement", "the guest image/firmware is not the one you expect"),
               required=ref.measurement is not None)
        tv.add(compare_value("host_data", rep.host_data, ref.host_data, "host data",
                             "the VM was launched with different host data"),
               required=ref.host_data is not None)
        if hcl:
            tv.add(azure_hcl.binding_claim(hcl), required=True)
            tv.add(azure_hcl.user_data_claim(hcl, ref.report_data), required=ref.report_data is not None)
        else:
            tv.add(compare_value("report_data", rep.report_data, ref.report_data, "report data",
                                 "the report answers a different request (replayed, or for another key)"),
                   required=ref.report_data is not None)
        return tv


def _pick_leaf(rep: snp.SnpReport, pool: list[x509.Certificate]
               ) -> tuple[x509.Certificate | None, AmdKeyInfo | None, str]:
    """(the certificate of the key SIGNING_KEY names, its extensions, why none was found).

    Only that key type may sign: a VLEK-signed report is never checked against a VCEK."""
    want = rep.signing_key
    cands = [(c, parse_key_info(c)) for c in pool if is_amd_key_cert(c)]
    typed = [ci for ci in cands if ci[1].key_type == want]
    for c, info in typed:
        if info.hwid and _hwid_matches(info.hwid, rep.chip_id):
            return c, info, ""
    if typed:
        return typed[0][0], typed[0][1], ""
    others = sorted({i.key_type for _, i in cands})
    if want == "VLEK":
        where = ("its cloud provider hands it out (on the VM: the extended report's certificate "
                 "table); pass it with --certs")
    else:
        where = (f"fetch it from AMD KDS ({_kds_hint(rep, None)}) or from the host's certificate "
                 "table and pass it with --certs")
    if others:
        return None, None, (f"this report is signed by a {want}; give its {want} (only "
                            f"{' and '.join(others)} certificates were given) — {where}")
    return None, None, f"no {want} certificate was given; {where}"


def _hwid_matches(hwid: bytes, chip_id: bytes) -> bool:
    # Turin VCEKs carry an 8-byte hwID; the report's CHIP_ID is those 8 bytes then zeros
    return chip_id[:len(hwid)] == hwid and not any(chip_id[len(hwid):])


def _product_mismatch(rep: snp.SnpReport, info: AmdKeyInfo | None, product: str | None) -> str:
    if product is None:
        return ""
    if info is not None and info.product and info.product != product:
        return f"the {info.key_type} is for {info.product_name} but the chain's root is ARK-{product}"
    if rep.product and rep.product != product:
        return (f"the report comes from a {rep.product} CPU (CPUID family {rep.cpuid_fam_id:#x} model "
                f"{rep.cpuid_mod_id:#x}) but the chain's root is ARK-{product}")
    return ""


def _check_signature(rep: snp.SnpReport, leaf: x509.Certificate | None, chain_ok: bool):
    if rep.signature_algo != snp.SIG_ALGO_ECDSA_P384_SHA384:
        return failed("signature", f"unknown signature algorithm {rep.signature_algo} (only 1 = "
                      "ECDSA P-384/SHA-384 exists): corrupted or forged report")
    if leaf is None:
        return unverified("signature", "cannot check the signature without the VCEK/VLEK certificate")
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        return failed("signature", "the VCEK/VLEK certificate does not hold an ECDSA P-384 key")
    try:
        key.verify(encode_dss_signature(rep.sig_r, rep.sig_s), rep.signed_bytes,
                   ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return failed("signature", "the report signature does not verify with the given "
                      f"{cert_name(leaf)} key: the report was altered, or the certificate belongs "
                      "to another chip/TCB")
    if chain_ok:
        return verified("signature", "ECDSA P-384 signature over bytes 0x000–0x29F verifies with the "
                        f"{rep.signing_key} key")
    return verified("signature", "signature verifies with the given key — but that key is not "
                    "trusted (see chain)")


def _check_chip(rep: snp.SnpReport, info: AmdKeyInfo):
    if rep.mask_chip_key:
        return unverified("chip_id", "the guest masked CHIP_ID (MASK_CHIP_KEY): the chip cannot be compared")
    if info.hwid is None:
        return failed("chip_id", "the VCEK carries no hwID extension")
    if _hwid_matches(info.hwid, rep.chip_id):
        return verified("chip_id", f"the VCEK was issued for this chip (hwID {info.hwid[:8].hex()}…)")
    return failed("chip_id", "the VCEK was issued for another chip (hwID ≠ CHIP_ID): use the VCEK of "
                  "the machine that produced the report")


def _check_vcek_tcb(rep: snp.SnpReport, info: AmdKeyInfo, product: str | None):
    turin = rep.is_turin or product == "Turin" or (info.product == "Turin")
    tcb = rep.tcb("reported_tcb", turin=turin).as_dict()
    diffs = [f"{k}: report {tcb.get(k)} vs certificate {info.tcb.get(k)}"
             for k in _TCB_KEYS if k in tcb and info.tcb.get(k) != tcb[k]]
    if diffs:
        return failed("vcek_tcb", f"the {info.key_type} was issued for another TCB than REPORTED_TCB "
                      f"({'; '.join(diffs)}): fetch the {info.key_type} for the reported TCB")
    return verified("vcek_tcb", f"{info.key_type} TCB extensions equal REPORTED_TCB ({_fmt(tcb)})")


def _check_reserved(rep: snp.SnpReport):
    raw = rep.raw or rep.to_bytes()
    bad = [f"{what} (0x{a:03X}–0x{b - 1:03X})" for a, b, what in snp.reserved_regions(rep.version)
           if any(raw[a:b])]
    if bad:
        return failed("reserved_zero", f"reserved bytes are not zero: {', '.join(bad)} — the report "
                      "was altered or is not a genuine report of this version")
    return verified("reserved_zero", "all reserved and unsigned bytes are zero")


def _check_debug(rep: snp.SnpReport, ref: ReferenceValues):
    if not rep.debug:
        return verified("debug", "debugging is disabled in the guest policy")
    if ref.allow_debug:
        return verified("debug", "DEBUG is allowed in the guest policy (the host can read guest "
                        "memory) — accepted because your policy allows debug")
    return failed("debug", "the guest policy allows DEBUG: the host can read and change the guest's "
                  "memory; launch the VM without the debug policy bit (or allow_debug in your policy)")


def _check_signer_info(rep: snp.SnpReport):
    probs = []
    if rep.flags & snp.SIGNER_INFO_RESERVED:
        probs.append(f"reserved SIGNER_INFO bits 31:5 are set ({rep.flags & snp.SIGNER_INFO_RESERVED:#x})")
    if rep.signing_key_value not in snp.SIGNING_KEYS:
        probs.append(f"SIGNING_KEY {rep.signing_key_value} is a reserved value (0 VCEK, 1 VLEK, 7 none)")
    if probs:
        return failed("signer_info", "; ".join(probs) + ": not a report AMD firmware produces — "
                      "altered or forged")
    return verified("signer_info", f"signed by the {rep.signing_key}; chip id masked: "
                    f"{rep.mask_chip_key}; author key used: {bool(rep.flags & 1)}")


_AMD_LOCATION = {x509.NameOID.COUNTRY_NAME: "US", x509.NameOID.STATE_OR_PROVINCE_NAME: "CA",
                 x509.NameOID.LOCALITY_NAME: "Santa Clara",
                 x509.NameOID.ORGANIZATION_NAME: "Advanced Micro Devices",
                 x509.NameOID.ORGANIZATIONAL_UNIT_NAME: "Engineering"}


def _name_problems(name: x509.Name, role: str, cn: str | None, location: bool) -> list[str]:
    probs = []
    got_cn = [a.value for a in name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if cn is not None and got_cn != [cn]:
        probs.append(f"{role} common name is {', '.join(map(str, got_cn)) or 'absent'}, expected {cn}")
    if location:
        for oid, want in _AMD_LOCATION.items():
            got = [a.value for a in name.get_attributes_for_oid(oid)]
            if got != [want]:
                probs.append(f"{role} {oid._name} is {', '.join(map(str, got)) or 'absent'}, expected {want}")
    return probs


def _check_key_cert(leaf: x509.Certificate, info: AmdKeyInfo, product: str | None, *,
                    simulated: bool):
    """``key_cert``: the VCEK/VLEK certificate looks like what AMD KDS issues (go-sev-guest
    ``validateKDSCertificateProductNonspecific``/``…Specifics``): X.509 v3, subject SEV-VCEK or
    SEV-VLEK at AMD's location, issued by SEV-<product> / SEV-VLEK-<product>."""
    kt = info.key_type
    probs = []
    if leaf.version != x509.Version.v3:
        probs.append(f"certificate version is {leaf.version.name}, expected v3")
    probs += _name_problems(leaf.subject, "subject", f"SEV-{kt}", location=not simulated)
    if not simulated and product:
        ica = f"SEV-{product}" if kt == "VCEK" else f"SEV-VLEK-{product}"
        probs += _name_problems(leaf.issuer, "issuer", ica, location=True)
    if probs:
        return failed("key_cert", f"the {kt} certificate is not one AMD issues: {'; '.join(probs)}")
    return verified("key_cert", f"{kt} certificate v3, subject SEV-{kt}"
                    + (" at AMD's location, issued by the product's " + ("ASK" if kt == "VCEK" else "ASVK")
                       if not simulated else " (simulated chain: AMD's names are not expected)"))


def _check_crl(col: pcs.Collateral | None, path: list[x509.Certificate], at: _dt.datetime | None):
    if col is None or not col.crls:
        return unverified("crl", "no AMD CRL given: revocation of the ASK/ASVK was not checked "
                          "(pass AMD's CRL, KDS /vcek/v1/<product>/crl, with --collateral)")
    if not path:
        return unverified("crl", "the chain did not verify: the AMD CRL cannot be applied")
    claim, times = check_crls(col.crls, path, at)
    if times and claim.status is not Status.FAILED:
        return failed("crl", "; ".join(times) + " — fetch a current CRL (or verify archived "
                      "evidence with --at)")
    return claim


def _check_policy(rep: snp.SnpReport, ref: ReferenceValues):
    p = rep.policy
    probs = []
    if p & snp.POLICY_MBZ:
        probs.append(f"policy bits 63:26 must be zero, got {p & snp.POLICY_MBZ:#x} (not a policy "
                     "AMD firmware accepts: altered or forged)")
    if not p & snp.POLICY_RESERVED_ONE:
        probs.append("policy bit 17 (must be one) is zero")
    if p & snp.POLICY_MIGRATE_MA and not ref.allow_migration_agent:
        probs.append("a migration agent may be attached (MIGRATE_MA), which can export the guest "
                     "(allow_migration_agent in your policy to accept)")
    if p & snp.POLICY_SMT and not ref.allow_smt:
        probs.append("SMT is allowed (set allow_smt, or launch with SMT disallowed)")
    if probs:
        return failed("policy", "; ".join(probs))
    return verified("policy", f"guest policy acceptable: {snp._policy_text(p)}")


def _check_vmpl(rep: snp.SnpReport, ref: ReferenceValues):
    if ref.vmpl is None:
        return unverified("vmpl", f"requested at VMPL {rep.vmpl}; no expected VMPL given")
    if rep.vmpl == ref.vmpl:
        return verified("vmpl", f"requested at VMPL {rep.vmpl} as expected")
    return failed("vmpl", f"requested at VMPL {rep.vmpl}, expected {ref.vmpl}: another privilege "
                  "level of the VM produced the report")


def _check_min_tcb(rep: snp.SnpReport, ref: ReferenceValues):
    tcb = rep.tcb("reported_tcb").as_dict()
    if not ref.min_tcb:
        return unverified("tcb", f"reported TCB {_fmt(tcb)}; no minimum TCB given")
    low = [f"{k} {tcb.get(k, 0)} < {v}" for k, v in ref.min_tcb.items() if tcb.get(k, 0) < v]
    if low:
        return failed("tcb", f"firmware below your minimum TCB ({', '.join(low)}): the host must "
                      "update the platform firmware/microcode")
    return verified("tcb", f"reported TCB {_fmt(tcb)} meets your minimum")


def _fmt(tcb: Mapping[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in tcb.items())
