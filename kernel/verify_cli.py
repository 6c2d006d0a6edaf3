"""``keepbook verify``: verify SEV-SNP / TDX / SGX evidence offline and print the trust vector.

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
    p = _Parser(prog="keepbook verify", description="Verify TEE evidence (SEV-SNP report, TDX or "
                "SGX quote; binary or hex) against pinned vendor roots and print the trust vector.")
    p.add_argument("evidence", help="evidence file (binary or hex text); '-' reads stdin")
    p.add_argument("--certs", action="append", default=[], metavar="FILE",
                   help="certificates (PEM with one or many, or DER); repeatable")
    p.add_argument("--collateral", action="append", default=[], metavar="FILE",
                   help="Intel collateral: dcap-qvl JSON, or PCS TCB info / QE identity bodies, "
                        "issuer chain PEM, CRLs; repeatable")
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
    certs: list[bytes] = []
    for f in args.certs:
        try:
            certs += load_certs(_read(f, "certificate file"))
        except EvidenceError as e:
            raise UsageError(f"{f}: {e}") from None
    collateral = None
    if args.collateral:
        from keepbook.keep.shared.evidence import pcs
        try:
            collateral = pcs.load_parts([_read(f, "collateral file") for f in args.collateral])
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
    if as_json:
        print(json.dumps(tv.to_json(), indent=2, ensure_ascii=False))
    else:
        print(tv.to_text())
    return EXIT_OK if tv.ok else EXIT_FAILED


def _unusable(reason: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"verified": False, "kind": None, "claims": [], "error": reason}))
    print(f"keepbook verify: unusable input: {reason}", file=sys.stderr)
    return EXIT_UNUSABLE


if __name__ == "__main__":
    sys.exit(main())
