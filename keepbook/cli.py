"""`keepbook` command: install, keepmgr, demo, verify, warm, bench, seal, keep-evidence, audit."""

from __future__ import annotations

import argparse
import sys


def cmd_install(args: argparse.Namespace) -> int:
    from keepbook.kernel.kernelspec import install

    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = install(user=args.user, prefix=prefix)
    print(f"Installed the keepbook kernelspec in {path}")
    return 0


def cmd_keepmgr(argv: list[str]) -> int:
    from keepbook.keep.host import keepmgr

    return keepmgr.main(argv)


def cmd_verify(argv: list[str]) -> int:
    from keepbook.kernel import verify_cli

    return verify_cli.main(argv)


def cmd_warm(args: argparse.Namespace) -> int:
    """Compile the Python engine and the compilers' runtime libraries once, in set-up, so that no
    test or first cell pays for it."""
    import time

    steps = [("Python engine (CPython in Wasm)", "keepbook.keep.wasmldr.pysession"),
             ("C/C++/Zig → wasm32-wasi libraries", "keepbook.kernel.compilers"),
             ("simulated vendor roots", "keepbook.keep.evidence.simulated")]
    for label, module in steps:
        t = time.time()
        try:
            mod = __import__(module, fromlist=["warm"])
            warm = getattr(mod, "warm", None)
            if warm is None:
                print(f"  {label}: nothing to warm")
                continue
            warm()
            print(f"  {label}: ready ({time.time() - t:.1f} s)")
        except Exception as exc:  # warming is an optimisation: report, don't fail set-up
            print(f"  {label}: could not warm ({type(exc).__name__}: {exc})", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from keepbook.kernel.demo import run_demo

    return run_demo(args.notebook, args.output, args.timeout)


def cmd_bench(argv: list[str]) -> int:
    from keepbook.kernel import bench

    return bench.main(argv)


# ---------------------------------------------------------------------- data owner commands


def _owner_attest(args: argparse.Namespace) -> tuple[object, object]:
    """(verified AttestationResult, trust vector text) for the Keep the owner seals to."""
    import asyncio
    import os

    from keepbook.keep import protocol
    from keepbook.kernel.attestation import verify_attestation
    from keepbook.kernel.trust_policy import TrustPolicy

    trust = TrustPolicy.load(args.trust_policy)
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
        from keepbook.kernel.agent import _read_token
        from keepbook.kernel.client import ManagerClient

        async def fetch() -> protocol.AttestResponse:
            mc = ManagerClient(args.to, _read_token(args.token_file))
            try:
                return await mc.attest(args.keep, nonce)
            finally:
                await mc.close()
        nonce = os.urandom(32)
        resp = asyncio.run(fetch())
    try:
        cfg = resp.keep_config()
    except protocol.ProtocolError as exc:
        raise SystemExit(f"keepbook: the Keep's config does not decode: {exc.reason}")
    requested = protocol.CreateKeep(backend=cfg.backend, profile=cfg.profile, limits=cfg.limits,
                                    policy=cfg.policy)
    result = verify_attestation(resp, nonce=nonce, requested=requested, policy=trust)
    text = result.vector.to_text()
    if args.keep_evidence:
        text += ("\nnote: recorded evidence — its nonce was chosen by whoever recorded it, so it "
                 "proves the Keep's key and config, not that the Keep is still running")
    return result, text


def cmd_seal(argv: list[str]) -> int:
    from keepbook.keep import datasets, sealing
    from keepbook.keep.policy import OutputPolicy, PolicyError
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
    ap.add_argument("--chunk-size", type=int, default=datasets.DEFAULT_CHUNK)
    ap.add_argument("--trust-policy", help="your trust policy (TOML) for the Keep's evidence")
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
        recipient = datasets.recipient_from_config(cfg, suite)
        key, key_path, created = datasets.load_or_create_owner_key(args.owner_key)
        if created:
            print(f"made a new owner key at {key_path}")
        alg, pub = datasets.owner_public(key)
        name = datasets.check_name(args.name or __import__("os").path.basename(args.data))
        out = args.output or args.data + ".sealed"
        with open(args.data, "rb") as src, open(out, "wb") as dst:
            for piece in datasets.seal_stream(src, name=name, recipient=recipient, suite=suite,
                                              owner_key=key, policy=policy,
                                              chunk_size=args.chunk_size):
                dst.write(piece)
    except (OSError, datasets.DatasetError, PolicyError, KeepError) as exc:
        print(f"keepbook seal: {exc}", file=sys.stderr)
        return 1
    print(f"sealed {args.data} → {out}\n  name /data/{name}, suite {suite}\n  owner "
          f"{datasets.fingerprint(alg, pub)}\n  policy {parsed.digest()} ({parsed.source})\n"
          f"  Keep profile {cfg.profile}, backend {cfg.backend}, {result.vector.label}")
    return 0


def cmd_keep_evidence(argv: list[str]) -> int:
    from keepbook.kernel.client import KeepError

    ap = argparse.ArgumentParser(prog="keepbook keep-evidence",
                                 description="Attest a Keep and save its answer for `keepbook seal "
                                 "--keep-evidence`.")
    ap.add_argument("--to", required=True, metavar="MANAGER_URL")
    ap.add_argument("--keep", required=True, metavar="ID")
    ap.add_argument("--token-file")
    ap.add_argument("--trust-policy")
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


def cmd_audit(argv: list[str]) -> int:
    import json

    from keepbook.keep import audit, protocol
    from keepbook.kernel.attestation import verify_attestation
    from keepbook.kernel.trust_policy import TrustPolicy

    ap = argparse.ArgumentParser(prog="keepbook audit", description="Check a Keep's audit log offline.")
    sub = ap.add_subparsers(dest="sub", required=True)
    v = sub.add_parser("verify", help="verify FILE (saved by %%audit): chain, signature, binding "
                       "to the recorded attestation")
    v.add_argument("file")
    v.add_argument("--trust-policy", help="your trust policy (TOML) for the recorded evidence")
    v.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        raw = audit.read_file(open(args.file, "rb").read())
        resp = protocol.AttestResponse.from_cbor(raw["attestation"])
        cfg = resp.keep_config()
    except OSError as exc:
        print(f"keepbook audit verify: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    except (audit.AuditError, protocol.ProtocolError) as exc:
        print(f"keepbook audit verify: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    requested = protocol.CreateKeep(backend=cfg.backend, profile=cfg.profile, limits=cfg.limits,
                                    policy=cfg.policy)
    result = verify_attestation(resp, nonce=resp.nonce, requested=requested,
                                policy=TrustPolicy.load(args.trust_policy))
    if not result.ok:
        print(f"FAILED attestation: the recorded evidence does not verify: "
              f"{result.vector.first_failure()}", file=sys.stderr)
        return 2
    try:
        log = audit.verify_export(raw["entries"], raw["head"], raw["signature"], cfg)
    except audit.AuditError as exc:
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Subcommands with their own full parsers get the rest of the line untouched.
    passthrough = {"keepmgr": cmd_keepmgr, "verify": cmd_verify, "bench": cmd_bench,
                   "seal": cmd_seal, "audit": cmd_audit, "keep-evidence": cmd_keep_evidence}
    if argv and argv[0] in passthrough:
        return passthrough[argv[0]](argv[1:])
    ap = argparse.ArgumentParser(prog="keepbook", description="A Jupyter kernel for confidential computing.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("install", help="install the keepbook kernelspec")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--user", action="store_true", help="into the user's Jupyter data dir")
    g.add_argument("--sys-prefix", action="store_true", help="into this Python environment")
    g.add_argument("--prefix", help="under this prefix")
    p.set_defaults(fn=cmd_install)
    sub.add_parser("keepmgr", help="run a keep manager (see `keepbook keepmgr --help`)")
    sub.add_parser("verify", help="verify attestation evidence (see `keepbook verify --help`)")
    sub.add_parser("bench", help="run the benchmarks (see `keepbook bench --help`)")
    sub.add_parser("seal", help="data owner: seal a dataset to an attested Keep (see --help)")
    sub.add_parser("keep-evidence", help="save a Keep's verified attestation for `seal --keep-evidence`")
    sub.add_parser("audit", help="`keepbook audit verify FILE`: check a saved audit log offline")
    p = sub.add_parser("warm", help="compile the Python engine and compiler caches once")
    p.set_defaults(fn=cmd_warm)
    p = sub.add_parser("demo", help="run the attestation walkthrough notebook headless")
    p.add_argument("--notebook", default=None, help="notebook to run (default: the walkthrough)")
    p.add_argument("--output", default="build/attestation-walkthrough.ipynb")
    p.add_argument("--timeout", type=int, default=600, help="per-cell timeout, seconds")
    p.set_defaults(fn=cmd_demo)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
