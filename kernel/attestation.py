"""Client side of the attestation handshake: decide whether a Keep's answer proves what we need.

Runs on the user's machine.  Combines the evidence verifier for the Keep's evidence kind with
the handshake's own checks (freshness, key binding, attested config) and the user's trust
policy, into one trust vector.  Nothing is sent to a Keep unless :attr:`TrustVector.ok`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from keepbook.keep.shared import facts, measurement, protocol
from keepbook.keep.shared.evidence import carried
from keepbook.keep.shared.evidence.trust import EvidenceError, Status, TrustVector, failed, unverified, verified
from keepbook.kernel.trust_policy import TrustPolicy



@dataclass
class AttestationResult:
    vector: TrustVector
    response: protocol.AttestResponse
    config: protocol.KeepConfig | None
    report_data: bytes | None

    @property
    def ok(self) -> bool:
        return self.vector.ok


def _simulated_roots(kind: str) -> list[bytes]:
    from keepbook.keep.shared.evidence import simulated_roots

    return simulated_roots.simulated_root_digests(kind)


def verify_attestation(resp: protocol.AttestResponse, *, nonce: bytes,
                       requested: protocol.CreateKeep, policy: TrustPolicy) -> AttestationResult:
    backend = requested.backend
    spec = facts.BACKENDS.get(backend)
    expected_kind = spec.evidence if spec else None
    expected_protection = spec.protection if spec else "hardware"

    # 1. The attested config must be the one we asked for.
    config: protocol.KeepConfig | None = None
    config_claims = []
    try:
        config = resp.keep_config()
    except protocol.ProtocolError as exc:
        config_claims.append(failed("config", f"the Keep's config does not decode: {exc.reason}"))
    if config is not None:
        config_claims.extend(_config_claims(config, requested, policy))

    # 2. The report data must bind our nonce, the Keep's HPKE key and that config.
    rd = protocol.report_data(nonce, resp.hpke_public_key, config.digest()) if config else None

    # 3. The evidence itself, by the verifier for its kind.
    simulated_roots: list[bytes] = []
    if policy.allow_simulated and expected_protection == "simulated" and resp.evidence_kind != "nil":
        try:
            simulated_roots = _simulated_roots(resp.evidence_kind)
        except Exception as exc:  # no simulated roots here: the chain claim will say so
            config_claims.append(unverified("simulated_root", f"no local simulated root: {exc}"))
    reference = policy.reference_values()
    reference.report_data = rd
    if expected_protection != "hardware" and reference.measurement is None:
        # a process-based Keep runs this installation's keepbook code: that is its reference
        reference.measurement = measurement.measurement(32 if resp.evidence_kind == "sgx" else 48)
    try:
        vector = carried.verify(resp.evidence_kind, resp.evidence, certs=list(resp.certs),
                                collateral=resp.collateral, reference=reference,
                                simulated_roots=simulated_roots)
    except EvidenceError as exc:
        vector = TrustVector(kind=resp.evidence_kind, protection="none")
        vector.add(failed("evidence", f"the Keep's evidence cannot be parsed: {exc}"), required=True)
    except Exception as exc:  # never let a hostile Keep crash the kernel
        vector = TrustVector(kind=str(resp.evidence_kind)[:32], protection="none")
        vector.add(failed("evidence", f"the Keep's evidence could not be verified ({type(exc).__name__}: {exc})"),
                   required=True)

    if expected_kind != resp.evidence_kind:
        vector.add(failed("evidence_kind", f"a {backend} Keep must return {expected_kind} evidence, "
                                           f"this one returned {resp.evidence_kind!r}"), required=True)

    # 4. Handshake claims derived from the report data check.
    rd_claim = vector.get("report_data")
    nonce_echo = hmac.compare_digest(resp.nonce, nonce)
    if rd_claim is not None and rd_claim.status is Status.VERIFIED and nonce_echo:
        vector.add(verified("freshness", "the evidence binds the fresh nonce this client just chose"),
                   required=True)
        vector.add(verified("key_binding", "the Keep's HPKE key is bound into the evidence: only "
                                           "that Keep can open what we seal to it"), required=True)
    else:
        why = ("the Keep echoed another nonce" if not nonce_echo else
               "the report data does not bind our nonce, the Keep's key and its config — the "
               "evidence is replayed, from another Keep, or altered by the host")
        vector.add(failed("freshness", why), required=True)
        vector.add(failed("key_binding", why), required=True)
    vector.require("report_data")
    vector.extend(config_claims)
    vector.require(*[c.name for c in config_claims])

    # 5. The protection level against the trust policy.
    prot = vector.protection
    if policy.require_hardware and prot != "hardware":
        vector.add(failed("protection", f"your trust policy requires hardware protection; this Keep "
                                        f"is {vector.label}"), required=True)
    elif prot == "none" and resp.evidence_kind == "nil":
        if policy.allow_nil:
            vector.add(verified("protection", "NO PROTECTION: a nil Keep, accepted because your "
                                              "trust policy allows nil Keeps (allow_nil)"), required=True)
        else:
            vector.add(failed("protection", "nil Keep refused: your trust policy sets allow_nil = false"),
                       required=True)
    elif prot == "simulated":
        vector.add(verified("protection", "SIMULATED: signed by this installation's simulated vendor "
                                          "root — no hardware protection (allow_simulated)"), required=True)
    elif prot == "hardware":
        vector.add(verified("protection", "hardware TEE evidence chained to a pinned vendor root"),
                   required=True)
    else:
        vector.add(failed("protection", f"protection level {prot!r} is not acceptable"), required=True)

    # 6. Which claims this policy requires.
    if resp.evidence_kind != "nil":
        vector.require("chain", "signature")
        if expected_protection == "hardware":   # TCB judged with carried collateral (issue 14)
            vector.require(*carried.required_on_hardware(resp.evidence_kind))
        vector.require(*policy.required_reference_claims())  # each reference value given
        m = vector.get("measurement")
        if policy.require_measurement and expected_protection != "hardware":
            vector.require("measurement")
        elif m is not None and m.status is Status.UNVERIFIED:
            pass  # reported, not required (hardware: no reference value configured yet)
    return AttestationResult(vector=vector, response=resp, config=config, report_data=rd)


def _config_claims(config: protocol.KeepConfig, requested: protocol.CreateKeep,
                   policy: TrustPolicy) -> list:
    out = []
    if config.backend != requested.backend:
        out.append(failed("config", f"the Keep says it is {config.backend!r}, you asked for "
                                    f"{requested.backend!r}"))
    elif config.limits != requested.limits:
        out.append(failed("config", "the Keep's attested limits differ from the ones you asked for"))
    else:
        out.append(verified("config", "backend and limits are the ones you asked for",
                            runtime=dict(config.runtime)))
    if config.profile != requested.profile:
        out.append(failed("profile", f"the Keep runs profile {config.profile!r}, you asked for "
                                     f"{requested.profile!r} — the host changed it"))
    elif config.profile not in policy.accept_profiles:
        out.append(failed("profile", f"profile {config.profile!r} is not accepted by your trust "
                                     f"policy ({policy.source})"))
    elif config.profile == "debug":
        out.append(verified("profile", "debug — WARNING: this Keep may log cell details to the "
                                       "host; use staging or production for real data"))
    elif config.profile == "production":
        out.append(verified("profile", "production: the host sees lifecycle events only; you get "
                                       "only what the output policy releases (keep.release)"))
    else:
        out.append(verified("profile", f"{config.profile}: the host sees lifecycle events only"))
    keys = config.keys or {}
    if keys:
        out.append(verified("keep_keys", "the Keep's dataset and audit keys are bound into the "
                                         "evidence (attested config)",
                            keys=", ".join(sorted(keys))))
    if config.policy != requested.policy:
        out.append(failed("output_policy", "the Keep's attested output policy is not the one you sent — "
                                    "the host changed it"))
    else:
        out.append(verified("output_policy", "the output policy in force is the one you sent"
                            if config.policy else "the profile's default output policy"))
    return out


def save_attestation(result: AttestationResult, path: str) -> str:
    """Write the Keep's attestation answer (CBOR ``attest_response``) for the data owner's
    ``keepbook seal --keep-evidence FILE``; it re-verifies it there."""
    from pathlib import Path

    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(result.response.to_cbor())
    return str(target)
