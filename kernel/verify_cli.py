"""``keepbook verify``: verify SEV-SNP / TDX / SGX / Arm CCA evidence offline and print the trust vector.

    keepbook verify EVIDENCE [--certs FILE]... [--collateral FILE]... [--report-data HEX]
                    [--at ISO8601] [--policy FILE] [--json] [--allow-simulated]

Exit codes: 0 every required claim verified and none failed; 1 a claim failed; 2 unusable input
(the reason is printed).  The policy file is TOML (see docs/attestation.md).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import tomllib
from pathlib import Path
from typing import Any, Sequence

from keepbook.keep.shared.evidence.detect import detect as detect_evidence
from keepbook.keep.shared.evidence.certs import load_certs
from keepbook.keep.shared.evidence import reference
from keepbook.keep.shared.evidence.registry import get_verifier
from keepbook.keep.shared.evidence.trust import EvidenceError, ReferenceValues, TrustVector

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2

_POLICY_KEYS = reference.KEYS | {"allow_simulated", "require", "reference", "kind"}


class UsageError(Exception):
    """Unusable input: exit code 2 with this reason."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # never sys.exit from inside main()
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="keepbook verify", description="Verify TEE evidence (SEV-SNP report or Azure "
                "HCL report, TDX or SGX quote, Arm CCA token; binary or hex) against pinned vendor "
                "roots (CCA: the platform key you pass) and print the trust vector.")
    p.add_argument("evidence", help="evidence file (binary or hex text); '-' reads stdin")
    p.add_argument("--certs", action="append", default=[], metavar="FILE",
                   help="certificates (PEM with one or many, or DER), or a CRL; for Arm CCA the "
                        "platform key (PEM public key or JWK); repeatable")
    p.add_argument("--collateral", action="append", default=[], metavar="FILE",
                   help="Intel collateral: dcap-qvl JSON, or PCS TCB info / QE identity bodies, "
                        "issuer chain PEM, CRLs; AMD's CRL; repeatable")
    p.add_argument("--report-data", metavar="HEX", help="expected report data (≤ 64 bytes, zero-padded)")
    p.add_argument("--at", metavar="ISO8601", help="check validity at this time (archived evidence)")
    p.add_argument("--policy", metavar="FILE", help="reference values / trust policy (TOML)")
    p.add_argument("--json", action="store_true", help="print the trust vector as JSON")
    p.add_argument("--allow-simulated", action="store_true",
                   help="accept this installation's SIMULATED roots (never real protection)")
    return p


def _read(path: str, what: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path!r}: {e.strerror or e}") from None


def _hex(value: Any, name: str, size: int | None, pad: bool = False) -> bytes:
    try:
        return reference._hex(value, name, size, pad)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def parse_time(s: str) -> _dt.datetime:
    try:
        t = _dt.datetime.fromisoformat(s.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at {s!r} is not an ISO 8601 time (e.g. 2025-06-20T00:00:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def load_policy(data: bytes) -> tuple[ReferenceValues, dict[str, Any]]:
    """TOML policy → (reference values, extras: allow_simulated, require)."""
    try:
        doc = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"policy is not valid TOML: {e}") from None
    doc = {**doc, **doc.pop("reference", {})}
    unknown = set(doc) - _POLICY_KEYS
    if unknown:
        raise UsageError(f"unknown policy key(s): {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(_POLICY_KEYS - {'reference'}))})")
    try:
        ref = reference.parse_reference(doc)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    extras = {"allow_simulated": bool(doc.get("allow_simulated", False)),
              "require": [str(x) for x in doc.get("require", [])], "kind": doc.get("kind")}
    return ref, extras


def verify(argv: Sequence[str]) -> tuple[TrustVector, argparse.Namespace]:
    """Parse arguments and verify; raises UsageError/EvidenceError for unusable input."""
    args = build_parser().parse_args(list(argv))
    kind, evidence = detect_evidence(_read(args.evidence, "evidence"))
    ref, extras = (load_policy(_read(args.policy, "policy")) if args.policy
                   else (ReferenceValues(), {"allow_simulated": False, "require": [], "kind": None}))
    if extras["kind"] and extras["kind"] != kind:
        raise UsageError(f"the policy is for {extras['kind']} evidence, this is {kind}")
    if args.report_data is not None:
        ref.report_data = _hex(args.report_data, "--report-data", 64, pad=True)
    certs, crls = _load_certs_args(args.certs, kind)
    if kind == "cca":   # a CCA platform key given with --certs is the user's own trust anchor
        ref.platform_keys, certs = certs, []
    collateral = None
    if args.collateral or crls:
        from keepbook.keep.shared.evidence import pcs
        try:
            collateral = pcs.load_parts([_read(f, "collateral file") for f in args.collateral] + crls)
        except EvidenceError as e:
            raise UsageError(f"collateral: {e}") from None
    at = parse_time(args.at) if args.at else None
    sim_roots: list[bytes] = []
    if args.allow_simulated or extras["allow_simulated"]:
        from keepbook.keep.shared.evidence import simulated_roots
        sim_roots = simulated_roots.simulated_root_digests(kind)
        certs += simulated_roots.simulated_ca_certs(kind)  # trust still comes only from sim_roots
    tv = get_verifier(kind).verify(evidence, certs=certs, collateral=collateral, reference=ref,
                                   simulated_roots=sim_roots, at=at)
    if extras["require"]:
        tv.require(*extras["require"])
    return tv, args


def _load_certs_args(files: Sequence[str], kind: str) -> tuple[list[bytes], list[bytes]]:
    """``--certs`` files → (DER certificates, or for CCA DER public keys; CRL files)."""
    from keepbook.keep.shared.evidence import pcs
    from keepbook.keep.shared.evidence.public_keys import load_public_keys

    certs: list[bytes] = []
    crls: list[bytes] = []
    for f in files:
        data = _read(f, "certificate file")
        try:
            certs += load_public_keys(data) if kind == "cca" else load_certs(data)
            continue
        except EvidenceError as e:
            problem = e
        try:                          # AMD's and Intel's CRLs may come with the certificates
            part = pcs.load_part(data)
        except EvidenceError:
            part = None
        if part is None or not part.crls or kind == "cca":
            raise UsageError(f"{f}: {problem}") from None
        crls += part.crls
    return certs, crls


def unchecked_notes(tv: TrustVector) -> list[str]:
    """Plain sentences for what this verification did NOT check (shown with the result)."""
    notes = []
    tcb, crl = tv.get("tcb_status"), tv.get("crl")
    if tcb is not None and tcb.status.value == "unverified":
        notes.append("TCB status was NOT checked (no collateral): the platform may run outdated "
                     "firmware — pass --collateral")
    if crl is not None and crl.status.value == "unverified":
        notes.append("Revocation was NOT checked (no CRL for this chain): a revoked key would "
                     "pass — pass the vendor's CRLs with --collateral")
    return notes


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    if any(a in ("-h", "--help") for a in argv):
        build_parser().print_help()
        return EXIT_OK
    try:
        tv, args = verify(argv)
    except (UsageError, EvidenceError) as e:
        return _unusable(str(e), as_json)
    except Exception as e:  # noqa: BLE001 — never a traceback for bad input
        return _unusable(f"unexpected problem with the input ({type(e).__name__}: {e})", as_json)
    notes = unchecked_notes(tv)
    if as_json:
        print(json.dumps({**tv.to_json(), "not_checked": notes}, indent=2, ensure_ascii=False))
    else:
        print(tv.to_text())
        for n in notes:
            print(f"NOTE: {n}")
    return EXIT_OK if tv.ok else EXIT_FAILED


def _unusable(reason: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"verified": False, "kind": None, "claims": [], "error": reason}))
    print(f"keepbook verify: unusable input: {reason}", file=sys.stderr)
    return EXIT_UNUSABLE


if __name__ == "__main__":
    sys.exit(main())
