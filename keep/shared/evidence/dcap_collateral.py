"""Intel collateral checks for a DCAP quote: TCB info, TDX module identity, QE identity, CRLs.

What Intel's QVL and Phala's dcap-qvl (``src/verify.rs``) check, each as a named claim:

* TCB info and QE identity signed — over the exact served bytes — by a certificate that chains to
  the pinned Intel root, and of a version this verifier understands (TCB info: SGX v2/v3, TDX v3;
  QE identity: ``QE`` v2, ``TD_QE`` v2/v3);
* the platform's TCB level: the first level (highest first, whatever the JSON order) whose 16 SGX
  components, PCE SVN and (TDX) 16 TDX components the platform reaches; a level with another
  number of components is malformed collateral and fails, it is never compared truncated;
* TDX: the TDX module's identity — MRSIGNER_SEAM and SEAM_ATTRIBUTES against ``tdxModule`` or the
  ``tdxModuleIdentities`` entry ``TDX_<version>``, and the module's own TCB level; a module
  version without an identity fails;
* CRLs (:func:`certs.check_crls`) and the time validity of everything.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Mapping

from cryptography import x509

from . import dcap, pcs, sigcache
from .certs import ChainResult, build_chain, by_validity, check_crls, der_of
from .ecdsa_rs import p256_ok
from .pck import PckInfo, has_sgx_ext
from .trust import (Claim, ReferenceValues, SimulatedRoots, TrustVector, failed, unverified,
                    verified)

#: TCB statuses from best to worst: a merge of two statuses keeps the worse one.
STATUS_RANK = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded",
               "ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded",
               "Revoked")
HINT = ("pass --collateral (Intel PCS TCB info + QE identity + CRLs, or dcap-qvl collateral JSON) "
        "to check whether the platform is up to date")


def worse(a: str, b: str) -> str:
    rank = {s: i for i, s in enumerate(STATUS_RANK)}
    return a if rank.get(a, len(STATUS_RANK)) >= rank.get(b, len(STATUS_RANK)) else b


@dataclass
class QuoteContext:
    """What the collateral checks need from the verified quote."""

    kind: str                              # "tdx" or "sgx"
    quote: dcap.Quote
    pck_info: PckInfo | None
    pool: list[x509.Certificate]
    chain_paths: list[list[x509.Certificate]] = field(default_factory=list)
    pinned: Mapping[bytes, str] = field(default_factory=dict)
    simulated_roots: SimulatedRoots = ()


def add_claims(tv: TrustVector, ctx: QuoteContext, col: pcs.Collateral | None,
               now: _dt.datetime, explicit_at: bool, ref: ReferenceValues) -> None:
    """Add ``tcb_status``, ``tdx_module`` (TDX), ``qe_identity``, ``crl`` and ``collateral_time``."""
    tdx = ctx.kind == "tdx"
    if col is None or (col.tcb_info is None and col.qe_identity is None and not col.crls):
        tv.add(unverified("tcb_status", f"no collateral: {HINT}"))
        if tdx:
            tv.add(unverified("tdx_module", "no collateral: the TDX module's identity was not checked"))
        tv.add(unverified("qe_identity", f"no collateral: {HINT}"))
        tv.add(unverified("crl", "no CRLs given: revocation of the PCK chain was not checked"))
        tv.add(unverified("collateral_time", "no collateral to check"))
        return
    times: list[str] = []
    paths = list(ctx.chain_paths)
    # TCB info (+ TDX module) ------------------------------------------------------------------
    if col.tcb_info is None:
        tv.add(unverified("tcb_status", f"collateral has no TCB info: {HINT}"), required=True)
        if tdx:
            tv.add(unverified("tdx_module", "collateral has no TCB info: the TDX module's identity "
                              "was not checked"), required=True)
    else:
        bad, path = signed_json_problem(col.tcb_info, "TCB info", ctx, now)
        paths.append(path)
        times += time_problems(col.tcb_info, "TCB info", now)
        info = col.tcb_info.body
        bad = bad or _tcb_info_version_problem(info, ctx.kind)
        module_claim: Claim | None = None
        if bad:
            tcb_claim = failed("tcb_status", bad)
            module_claim = failed("tdx_module", f"the TCB info cannot be used: {bad}") if tdx else None
        elif ctx.pck_info is None:
            tcb_claim = unverified("tcb_status", "no PCK certificate: the platform's TCB is unknown")
            module_claim = unverified("tdx_module", "no PCK certificate") if tdx else None
        else:
            module_claim, module_status = _module_identity(info, ctx.quote) if tdx else (None, None)
            tcb_claim = _tcb_status(info, ctx, ref, module_status)
        tv.add(tcb_claim, required=True)
        if module_claim is not None:
            tv.add(module_claim, required=True)
    # QE identity ----------------------------------------------------------------------------
    if col.qe_identity is None:
        tv.add(unverified("qe_identity", f"collateral has no QE identity: {HINT}"), required=True)
    else:
        bad, path = signed_json_problem(col.qe_identity, "QE identity", ctx, now)
        paths.append(path)
        times += time_problems(col.qe_identity, "QE identity", now)
        tv.add(failed("qe_identity", bad) if bad else _qe_identity(col.qe_identity.body, ctx),
               required=True)
    # CRLs -----------------------------------------------------------------------------------
    crl_claim, crl_times = check_crls(col.crls, [c for p in paths for c in p], now)
    tv.add(crl_claim)
    times += crl_times
    if times:
        more = ("" if explicit_at else
                " — no --at was given, so the current time was used; verify archived collateral "
                "with --at set to a time inside its validity")
        tv.add(failed("collateral_time", "; ".join(times) + more), required=True)
    else:
        tv.add(verified("collateral_time", f"all collateral is valid at {now:%Y-%m-%d %H:%M}Z"),
               required=True)


# -- signatures and time ------------------------------------------------------------------------

def signed_json_problem(sj: pcs.SignedJson, what: str, ctx: QuoteContext, now: _dt.datetime
                        ) -> tuple[str, list[x509.Certificate]]:
    """("" or why the signed object is not trusted, the signer's chain)."""
    signers = [c for c in by_validity(ctx.pool, now) if not has_sgx_ext(c)
               and sigcache.remember("p256", (der_of(c), sj.signed, sj.signature),
                                     lambda c=c: p256_ok(c.public_key(), sj.signature, sj.signed))]
    if not signers:
        return (f"the {what} signature does not verify with any given certificate (altered, or "
                "the TCB signing certificate chain is missing from the collateral)"), []
    first: ChainResult | None = None
    for signer in signers:   # same key, several certificates: the one whose chain holds now
        res = build_chain(signer, ctx.pool, pinned=ctx.pinned, simulated=ctx.simulated_roots,
                          at=now, vendor="Intel SGX Root CA")
        if res.ok:
            return "", res.path
        first = first or res
    assert first is not None
    return f"the {what} signer is not trusted: {first.reason}", []


def time_problems(sj: pcs.SignedJson, what: str, now: _dt.datetime) -> list[str]:
    if now < sj.issue_date:
        return [f"{what} was issued {sj.issue_date:%Y-%m-%d %H:%M}Z, after {now:%Y-%m-%d %H:%M}Z"]
    if now > sj.next_update:
        return [f"{what} expired {sj.next_update:%Y-%m-%d %H:%M}Z (nextUpdate)"]
    return []


# -- TCB info -----------------------------------------------------------------------------------

def _tcb_info_version_problem(info: Mapping[str, Any], kind: str) -> str:
    ident, version = info.get("id", "SGX"), info.get("version")
    ok = (ident == "TDX" and version == 3) if kind == "tdx" else \
        (ident == "SGX" and version in (2, 3))
    if ok:
        return ""
    want = "TDX, version 3" if kind == "tdx" else "SGX, version 2 or 3"
    return (f"the TCB info is {ident} version {version!r}, expected {want}: fetch the TCB info for "
            f"{kind.upper()} (PCS /{'tdx' if kind == 'tdx' else 'sgx'}/certification/v4/tcb)")


def _components(tcb: Mapping[str, Any], key: str, legacy: str | None) -> list[int] | None:
    """The SVN list of one TCB level; None when it does not hold exactly 16 components."""
    if key in tcb:
        comps = tcb[key]
        if not isinstance(comps, list) or len(comps) != 16:
            return None
        return [int(c.get("svn", 0)) if isinstance(c, dict) else -1 for c in comps]
    if legacy is None:
        return None
    keys = [legacy % i for i in range(1, 17)]
    if not all(k in tcb for k in keys):
        return None
    return [int(tcb[k]) for k in keys]


def _tcb_status(info: Mapping[str, Any], ctx: QuoteContext, ref: ReferenceValues,
                module_status: str | None) -> Claim:
    pck = ctx.pck_info
    assert pck is not None
    if bytes.fromhex(str(info.get("fmspc", ""))) != pck.fmspc:
        return failed("tcb_status", f"the TCB info is for FMSPC {info.get('fmspc')}, the PCK for "
                      f"{pck.fmspc.hex().upper()}: fetch the TCB info for this platform")
    if bytes.fromhex(str(info.get("pceId", "0000"))) != pck.pceid:
        return failed("tcb_status", "the TCB info is for another PCE id")
    body = ctx.quote.body
    tee_svn = body.tee_tcb_svn if isinstance(body, dcap.TdReport) else None
    levels = []
    for i, lvl in enumerate(info.get("tcbLevels", [])):
        t = lvl.get("tcb", {}) if isinstance(lvl, dict) else {}
        sgx = _components(t, "sgxtcbcomponents", "sgxtcbcomp%02dsvn")
        tdx = _components(t, "tdxtcbcomponents", None) if tee_svn is not None else []
        if sgx is None or tdx is None:
            which = "SGX" if sgx is None else "TDX"
            return failed("tcb_status", f"TCB info level {i + 1} does not list exactly 16 {which} TCB "
                          "components: malformed collateral (a shorter list is never compared "
                          "truncated); fetch the TCB info again")
        levels.append((sgx, int(t.get("pcesvn", 0)), tdx, lvl))
    # Intel's QVL orders levels itself (highest first), whatever the JSON order
    levels.sort(key=lambda x: (x[0], x[1], x[2]), reverse=True)
    level = None
    for sgx, pcesvn, tdx, lvl in levels:
        if any(p < c for p, c in zip(pck.cpusvn_components, sgx)) or pck.pcesvn < pcesvn:
            continue
        if tee_svn is not None:
            start = 2 if tee_svn[1] > 0 else 0  # TDX ≥ 1.5: module SVNs are judged by module identity
            if any(tee_svn[i] < tdx[i] for i in range(start, 16)):
                continue
        level = lvl
        break
    if level is None:
        return failed("tcb_status", "the platform's TCB is below every level in the TCB info "
                      "(status: no matching TCB level): the host must update firmware/microcode")
    status = str(level.get("tcbStatus", "Unknown"))
    advisories = list(level.get("advisoryIDs", []))
    if module_status:
        status = worse(status, module_status)
    text = f"{status} (TCB date {level.get('tcbDate', '?')}"
    text += f"; advisories {', '.join(advisories)})" if advisories else ")"
    if status in ref.accept_tcb_status:
        return verified("tcb_status", f"platform TCB status {text}", status=status, advisories=advisories)
    return failed("tcb_status", f"platform TCB status {text} is not accepted by your policy "
                  f"(accepted: {', '.join(ref.accept_tcb_status)}); update the platform or accept "
                  "this status in accept_tcb_status", status=status, advisories=advisories)


def _hex(value: Any, size: int, what: str) -> bytes:
    try:
        b = bytes.fromhex(str(value))
    except ValueError:
        b = b""
    if len(b) != size:
        raise ValueError(f"{what} is not {size} bytes of hex")
    return b


def _module_identity(info: Mapping[str, Any], q: dcap.Quote) -> tuple[Claim, str | None]:
    """(the ``tdx_module`` claim, the module's TCB status to fold into ``tcb_status``)."""
    body = q.body
    assert isinstance(body, dcap.TdReport)
    isvsvn, version = body.tee_tcb_svn[0], body.tee_tcb_svn[1]
    base = info.get("tdxModule")
    if not isinstance(base, dict):
        return failed("tdx_module", "the TCB info has no tdxModule: the TDX module cannot be "
                      "identified; fetch a TDX TCB info (version 3)"), None
    ident: Mapping[str, Any] = base
    levels = None
    if version > 0:
        want = f"TDX_{version:02X}"
        ident = next((m for m in info.get("tdxModuleIdentities", []) or []
                      if isinstance(m, dict) and str(m.get("id", "")).upper() == want), {})
        if not ident:
            return failed("tdx_module", f"the TCB info has no identity {want} for the TDX module "
                          f"version {version} this TD runs on: an unknown module is not trusted; "
                          "fetch current collateral for this platform"), None
        levels = ident.get("tcbLevels", [])
    try:
        mrsigner = _hex(ident.get("mrsigner"), 48, "mrsigner")
        attrs = _hex(ident.get("attributes"), 8, "attributes")
        mask = _hex(ident.get("attributesMask"), 8, "attributesMask")
    except ValueError as exc:
        return failed("tdx_module", f"the TCB info's TDX module identity is malformed: {exc}"), None
    name = str(ident.get("id", "tdxModule"))
    if body.mrsignerseam != mrsigner:
        return failed("tdx_module", f"MRSIGNER_SEAM {body.mrsignerseam.hex()[:16]}… is not the "
                      f"signer Intel publishes for {name} ({mrsigner.hex()[:16]}…): not Intel's "
                      "TDX module"), None
    seam = body.seam_attributes
    if any((a & m) != (e & m) for a, e, m in zip(seam, attrs, mask)) or \
            any(a & ~m & 0xFF for a, m in zip(seam, mask)):
        return failed("tdx_module", f"SEAM_ATTRIBUTES {seam.hex()} differ from {name}'s "
                      f"{attrs.hex()} (mask {mask.hex()}): the TDX module runs in another mode "
                      "(e.g. debug)"), None
    if levels is None:
        return verified("tdx_module", "TDX module signed by Intel (MRSIGNER_SEAM and "
                        "SEAM_ATTRIBUTES match tdxModule; module version 0)"), None
    ordered = sorted((lv for lv in levels if isinstance(lv, dict)),
                     key=lambda lv: int(lv.get("tcb", {}).get("isvsvn", 0)), reverse=True)
    level = next((lv for lv in ordered if isvsvn >= int(lv.get("tcb", {}).get("isvsvn", 0))), None)
    if level is None:
        return failed("tdx_module", f"TDX module {name} SVN {isvsvn} is below every TCB level "
                      "Intel lists for it: the host must update the TDX module"), None
    status = str(level.get("tcbStatus", "Unknown"))
    return verified("tdx_module", f"TDX module {name} (SVN {isvsvn}) is Intel's: MRSIGNER_SEAM and "
                    f"SEAM_ATTRIBUTES match; module TCB {status}", status=status), status


# -- QE identity --------------------------------------------------------------------------------

def _qe_identity(ident: Mapping[str, Any], ctx: QuoteContext) -> Claim:
    want_id, versions = ("TD_QE", (2, 3)) if ctx.kind == "tdx" else ("QE", (2,))
    if ident.get("id", "QE") != want_id or ident.get("version") not in versions:
        return failed("qe_identity", f"QE identity is {ident.get('id')} version "
                      f"{ident.get('version')!r}, expected {want_id} version "
                      f"{' or '.join(map(str, versions))}: fetch the QE identity for "
                      f"{ctx.kind.upper()}")
    qe = ctx.quote.qe.qe_report
    probs = []
    if qe.debug:
        probs.append("the quoting enclave runs in DEBUG mode")
    if bytes.fromhex(str(ident.get("mrsigner", ""))) != qe.mrsigner:
        probs.append("MRSIGNER differs (not Intel's quoting enclave)")
    if ident.get("isvprodid") != qe.isvprodid:
        probs.append(f"ISVPRODID {qe.isvprodid} ≠ {ident.get('isvprodid')}")
    mask = int(str(ident.get("miscselectMask", "FFFFFFFF")), 16)
    if qe.miscselect & mask != int(str(ident.get("miscselect", "0")), 16) & mask:
        probs.append("MISCSELECT differs")
    amask = bytes.fromhex(str(ident.get("attributesMask", "00" * 16)))
    attrs = bytes.fromhex(str(ident.get("attributes", "00" * 16)))
    if bytes(a & m for a, m in zip(qe.attributes, amask)) != bytes(a & m for a, m in zip(attrs, amask)):
        probs.append("ATTRIBUTES differ (e.g. a debug QE)")
    if probs:
        return failed("qe_identity", "the quoting enclave is not the one Intel publishes: "
                      + "; ".join(probs))
    status = "OutOfDate"
    ordered = sorted((lv for lv in ident.get("tcbLevels", []) if isinstance(lv, dict)),
                     key=lambda lv: int(lv.get("tcb", {}).get("isvsvn", 0)), reverse=True)
    for lvl in ordered:
        if qe.isvsvn >= int(lvl.get("tcb", {}).get("isvsvn", 0)):
            status = str(lvl.get("tcbStatus", "Unknown"))
            break
    if status == "UpToDate":
        return verified("qe_identity", f"Intel's quoting enclave (ISVSVN {qe.isvsvn}), UpToDate")
    return failed("qe_identity", f"quoting enclave ISVSVN {qe.isvsvn} is {status}: the host must "
                  "update the DCAP quoting enclave")
