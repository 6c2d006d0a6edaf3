"""The data owner's commands, on the data owner's machine: ``keepbook seal`` (seal a dataset and
its output policy to an attested Keep), ``keepbook keep-evidence`` (save a Keep's verified
attestation) and ``keepbook audit verify`` (check a saved audit log offline).  The user's
machine: the owner's signing key and the plaintext are read here."""

from __future__ import annotations

import argparse
import sys

from dataclasses import replace

from keepbook.keep.shared import audit_format, dataset_format, facts, protocol
from keepbook.kernel import dataset_sealer
from keepbook.kernel.attestation import AttestationResult, ExpectationBuilder, verify_attestation
from keepbook.kernel.trust_policy import TrustPolicy


def add_expectation_options(ap: argparse.ArgumentParser) -> None:
    """What the data owner expects of the Keep they seal to — stated by them, never read from
    the Keep's own answer."""
    ap.add_argument("--profile", default="production", choices=facts.PROFILES,
                    help="the profile the Keep must run (default: production)")
    ap.add_argument("--keep-fingerprint", metavar="FP",
                    help="the Keep fingerprint the analyst showed you (`%%keep status`): any other "
                         "Keep — a twin the host started — is refused")
    ap.add_argument("--allow-simulated", action="store_true",
                    help="accept a SIMULATED Keep (demos and teaching only; it protects nothing)")
    ap.add_argument("--trust-policy", help="your trust policy (TOML) for the Keep's evidence; "
                    "default: hardware Keeps only")


def owner_trust(args: argparse.Namespace) -> TrustPolicy:
    """The owner's trust policy: from their file, else hardware only (nil never, simulated only
    with --allow-simulated)."""
    if args.trust_policy:
        trust = TrustPolicy.load(args.trust_policy)
    else:
        trust = TrustPolicy(require_hardware=True, allow_simulated=False, allow_nil=False,
                            source="the data owner's default: hardware Keeps only")
    if getattr(args, "allow_simulated", False):
        trust = replace(trust, require_hardware=False, allow_simulated=True,
                        source=f"{trust.source}, SIMULATED Keeps allowed (--allow-simulated)")
    return trust


def owner_expectation(args: argparse.Namespace) -> ExpectationBuilder:
    """The owner's expectations of a Keep (trust policy, profile, fingerprint), from their own
    options — for sealing and for review alike; the nonce and Keep id are added by the caller."""
    expect = ExpectationBuilder().trust_policy(owner_trust(args)).profile(args.profile)
    if args.keep_fingerprint:
        try:
            expect = expect.fingerprint(args.keep_fingerprint)
        except ValueError as exc:
            raise SystemExit(f"keepbook: --keep-fingerprint: {exc}")
    return expect


def _owner_attest(args: argparse.Namespace) -> tuple[AttestationResult, str]:
    """(verified AttestationResult, trust vector text) for the Keep the owner seals to."""
    import asyncio
    import os

    from keepbook.kernel.agent import _read_token
    from keepbook.kernel.manager_client import ManagerClient

    if args.keep_evidence:
        try:
            resp = protocol.AttestResponse.from_cbor(open(args.keep_evidence, "rb").read())
        except OSError as exc:
            raise SystemExit(f"keepbook: cannot read {args.keep_evidence}: {exc.strerror}")
        except protocol.ProtocolError as exc:
            raise SystemExit(f"keepbook: {args.keep_evidence} is not a saved attestation "
                             f"(keepbook keep-evidence -o FILE): {exc.reason}")
        nonce = resp.nonce
    else:
        async def fetch() -> protocol.AttestResponse:
            mc = ManagerClient(args.to, _read_token(args.token_file))
            try:
                return await mc.attest(args.keep, nonce)
            finally:
                await mc.close()
        nonce = os.urandom(32)
        resp = asyncio.run(fetch())
    expect = owner_expectation(args).nonce(nonce)
    if args.keep:
        expect = expect.keep_id(args.keep)
    result = verify_attestation(resp, expect.build())
    text = result.vector.to_text()
    if result.fingerprint:
        text += f"\nKeep fingerprint: {result.fingerprint}"
    if not args.keep_fingerprint:
        text += ("\nnote: no --keep-fingerprint given — compare the fingerprint above with the one "
                 "the analyst's `%keep status` shows before you trust this Keep with data")
    if args.keep_evidence:
        text += ("\nnote: recorded evidence — its nonce was chosen by whoever recorded it, so it "
                 "proves the Keep's key and config, not that the Keep is still running")
    return result, text


def seal_main(argv: list[str]) -> int:
    from keepbook.keep.shared import sealing
    from keepbook.keep.shared.policy import OutputPolicy, PolicyError
    from keepbook.kernel.client import KeepError

    ap = argparse.ArgumentParser(
        prog="keepbook seal", description="Seal a dataset, with your output policy, to an attested "
        "Keep: HPKE to the Keep's attested dataset key, chunked authenticated stream, signed with "
        "your owner key.  The result is ciphertext: hand it to the analyst (%%upload FILE).")
    ap.add_argument("data", help="the file to seal")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="MANAGER_URL", help="attest the Keep now, with a fresh nonce, "
                       "through this keep manager (needs --keep)")
    where.add_argument("--keep-evidence", metavar="FILE",
                       help="a saved attestation of the Keep (`keepbook keep-evidence -o FILE`)")
    ap.add_argument("--keep", metavar="ID", help="the Keep's id (with --to)")
    ap.add_argument("--token-file", help="bearer token for --to (or $KEEPBOOK_MANAGER_TOKEN)")
    ap.add_argument("--policy", metavar="FILE", help="your output policy (TOML) for this data")
    ap.add_argument("--owner-key", metavar="PEM", help="your Ed25519 or ECDSA P-256 signing key "
                    "(default: $KEEPBOOK_OWNER_KEY or ~/.config/keepbook/owner-key.pem, made on first use)")
    ap.add_argument("--name", help="name under /data in the Keep (default: the file's name)")
    ap.add_argument("--pq", action="store_true", help="post-quantum hybrid KEM ML-KEM-768+X25519")
    ap.add_argument("--chunk-size", type=int, default=dataset_format.DEFAULT_CHUNK)
    add_expectation_options(ap)
    ap.add_argument("-o", "--output", help="where to write (default: DATA.sealed)")
    args = ap.parse_args(argv)
    if args.to and not args.keep:
        ap.error("--to needs --keep ID")
    try:
        policy = open(args.policy, "rb").read() if args.policy else b""
        result, text = _owner_attest(args)
        print(text)
        if not result.ok:
            print(f"keepbook seal: the Keep did not verify — nothing was sealed. Failing claim: "
                  f"{result.vector.first_failure()}", file=sys.stderr)
            return 2
        cfg = result.config
        parsed = OutputPolicy.parse(policy, cfg.profile, args.policy or "the profile default")
        if cfg.profile not in parsed.data_profiles:
            print(f"keepbook seal: your policy allows this data only in profile(s) "
                  f"{', '.join(parsed.data_profiles)}; that Keep runs {cfg.profile}", file=sys.stderr)
            return 2
        suite = sealing.PQ_SUITE.name if args.pq else sealing.DEFAULT_SUITE
        recipient = dataset_format.recipient_from_config(cfg, suite)
        key, key_path, created = dataset_sealer.load_or_create_owner_key(args.owner_key)
        if created:
            print(f"made a new owner key at {key_path}")
        alg, pub = dataset_sealer.owner_public(key)
        name = dataset_format.check_name(args.name or __import__("os").path.basename(args.data))
        out = args.output or args.data + ".sealed"
        digests: list[str] = []
        with open(args.data, "rb") as src, open(out, "wb") as dst:
            for piece in dataset_sealer.seal_stream(src, name=name, recipient=recipient, suite=suite,
                                                    owner_key=key, policy=policy,
                                                    chunk_size=args.chunk_size, digest=digests.append):
                dst.write(piece)
    except (OSError, dataset_format.DatasetError, PolicyError, KeepError) as exc:
        print(f"keepbook seal: {exc}", file=sys.stderr)
        return 1
    print(f"sealed {args.data} → {out}\n  name /data/{name}, suite {suite}\n  owner "
          f"{dataset_format.fingerprint(alg, pub)}\n  policy {parsed.digest()} ({parsed.source})\n"
          f"  Keep profile {cfg.profile}, backend {cfg.backend}, {result.vector.label}\n"
          f"  digest {digests[0]} — keyed with this dataset's own key: the Keep's audit log "
          "shows the same digest when it opened exactly this data")
    return 0


def keep_evidence_main(argv: list[str]) -> int:
    from keepbook.kernel.client import KeepError

    ap = argparse.ArgumentParser(prog="keepbook keep-evidence",
                                 description="Attest a Keep and save its answer for `keepbook seal "
                                 "--keep-evidence`.")
    ap.add_argument("--to", required=True, metavar="MANAGER_URL")
    ap.add_argument("--keep", required=True, metavar="ID")
    ap.add_argument("--token-file")
    add_expectation_options(ap)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    args.keep_evidence = None
    try:
        result, text = _owner_attest(args)
    except KeepError as exc:
        print(f"keepbook keep-evidence: {exc}", file=sys.stderr)
        return 1
    print(text)
    if not result.ok:
        print(f"keepbook keep-evidence: not saved, the Keep did not verify: "
              f"{result.vector.first_failure()}", file=sys.stderr)
        return 2
    with open(args.output, "wb") as fh:
        fh.write(result.response.to_cbor())
    print(f"saved to {args.output}")
    return 0


def audit_main(argv: list[str]) -> int:
    import json

    ap = argparse.ArgumentParser(prog="keepbook audit", description="Check a Keep's audit log offline.")
    sub = ap.add_subparsers(dest="sub", required=True)
    v = sub.add_parser("verify", help="verify FILE (saved by %%audit): chain, signature, binding "
                       "to the recorded attestation")
    v.add_argument("file")
    v.add_argument("--trust-policy", help="your trust policy (TOML) for the recorded evidence")
    v.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        raw = audit_format.read_file(open(args.file, "rb").read())
        resp = protocol.AttestResponse.from_cbor(raw["attestation"])
        cfg = resp.keep_config()
    except OSError as exc:
        print(f"keepbook audit verify: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    except (audit_format.AuditError, protocol.ProtocolError) as exc:
        print(f"keepbook audit verify: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    # the recorded evidence, checked under the reader's trust policy (what it asked for is not
    # known here: the claims about it are shown as given)
    expect = ExpectationBuilder().nonce(resp.nonce).trust_policy(TrustPolicy.load(args.trust_policy))
    result = verify_attestation(resp, expect.build())
    if not result.ok:
        print(f"FAILED attestation: the recorded evidence does not verify: "
              f"{result.vector.first_failure()}", file=sys.stderr)
        return 2
    try:
        log = audit_format.verify_export(raw["entries"], raw["head"], raw["signature"], cfg)
    except audit_format.AuditError as exc:
        print(f"FAILED {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"ok": True, "checks": log.checks, "entries": log.table(),
                          "protection": result.vector.label}, indent=1))
        return 0
    print(f"✔ attestation: {result.vector.label} (recorded evidence, profile {cfg.profile})")
    for c in log.checks:
        print(f"✔ {c}")
    for r in log.table():
        print(f"{r['seq']:>4}  {r['time']}  {r['kind']:<14} {r['detail']}")
    return 0
