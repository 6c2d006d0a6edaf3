"""Client side of the attestation handshake: decide whether a Keep's answer proves what we need.

Runs on the user's machine.  What the user expects is stated first, as an immutable
:class:`Expectation` built with :class:`ExpectationBuilder` (the way ``cryptography``'s
``PolicyBuilder`` builds a verifier): the backend, profile, limits and output policy asked for,
the Keep's id, the trust policy, the fresh nonce — never taken from the Keep's own answer.
:func:`verify_attestation` then combines the evidence verifier for the Keep's evidence kind
with the handshake's own checks (freshness, key binding, attested config) into one trust
vector.  Nothing is sent to a Keep unless :attr:`TrustVector.ok`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from keepbook.keep.shared import facts, measurement, protocol, sealing, vm_image
from keepbook.keep.shared.evidence import carried
from keepbook.keep.shared.evidence.trust import (Claim, EvidenceError, Status, TrustVector,
                                                 failed, unverified, verified)
from keepbook.kernel.sim_trust import OWN_LABEL, SimRootTrust
from keepbook.kernel import coco_reference, launch_measurement
from keepbook.kernel.trust_policy import TrustPolicy


@dataclass(frozen=True)
class Expectation:
    """What the user expects of one attestation.  ``None`` means "not stated": the claim is
    shown as unverified (or, for the backend, any backend the trust policy accepts)."""

    nonce: bytes
    trust: TrustPolicy
    backend: str | None = None
    profile: str | None = None
    limits: Mapping[str, Any] | None = None
    output_policy: bytes | None = None
    keep_id: str | None = None
    fingerprint: str | None = None
    #: which simulated roots a ``sim-*`` Keep may chain to, and whose each is (None: this
    #: installation's own, if the trust policy allows simulation)
    sim_trust: SimRootTrust | None = None


class ExpectationBuilder:
    """Builds an :class:`Expectation`; each method returns a new builder (the builder is
    immutable, so a partly built one can be shared)."""

    def __init__(self, _fields: Mapping[str, Any] | None = None):
        self._fields: Mapping[str, Any] = MappingProxyType(dict(_fields or {}))

    def _with(self, **kw: Any) -> "ExpectationBuilder":
        return ExpectationBuilder({**self._fields, **kw})

    def nonce(self, nonce: bytes) -> "ExpectationBuilder":
        if not isinstance(nonce, (bytes, bytearray)) or not 32 <= len(nonce) <= 64:
            raise ValueError("the nonce must be 32 to 64 bytes")
        return self._with(nonce=bytes(nonce))

    def trust_policy(self, policy: TrustPolicy) -> "ExpectationBuilder":
        return self._with(trust=policy)

    def backend(self, name: str) -> "ExpectationBuilder":
        facts.backend(name)  # ValueError naming the known backends
        return self._with(backend=name)

    def profile(self, name: str) -> "ExpectationBuilder":
        if name not in facts.PROFILES:
            raise ValueError(f"unknown profile {name!r}; known: {', '.join(facts.PROFILES)}")
        return self._with(profile=name)

    def limits(self, limits: Mapping[str, Any]) -> "ExpectationBuilder":
        return self._with(limits=MappingProxyType(dict(limits)))

    def output_policy(self, policy: bytes) -> "ExpectationBuilder":
        return self._with(output_policy=bytes(policy))

    def keep_id(self, keep_id: str) -> "ExpectationBuilder":
        return self._with(keep_id=keep_id)

    def fingerprint(self, fp: str) -> "ExpectationBuilder":
        return self._with(fingerprint=protocol.normalize_fingerprint(fp))

    def sim_trust(self, sim: SimRootTrust) -> "ExpectationBuilder":
        return self._with(sim_trust=sim)

    def requested(self, req: protocol.CreateKeep) -> "ExpectationBuilder":
        """Everything a create request asked for."""
        return (self.backend(req.backend).profile(req.profile).limits(req.limits)
                .output_policy(req.policy))

    def build(self) -> Expectation:
        if "nonce" not in self._fields:
            raise ValueError("an expectation needs the fresh nonce the client chose")
        fields = dict(self._fields)
        fields.setdefault("trust", TrustPolicy())
        return Expectation(**fields)


@dataclass(frozen=True)
class AttestationResult:
    vector: TrustVector
    response: protocol.AttestResponse
    config: protocol.KeepConfig | None
    report_data: bytes | None
    expectation: Expectation | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.vector.ok

    @property
    def fingerprint(self) -> str | None:
        """The Keep's short fingerprint (of its attested config), to compare out of band."""
        return self.config.fingerprint() if self.config is not None else None


def verify_attestation(resp: protocol.AttestResponse, expect: Expectation) -> AttestationResult:
    """The trust vector of ``resp`` under ``expect``: every claim verified, failed or
    unverified, with a reason; :attr:`AttestationResult.ok` only if every required claim is
    verified."""
    trust = expect.trust
    # 1. The attested config must be the one we expected.
    config: protocol.KeepConfig | None = None
    config_claims: list[Claim] = []
    try:
        config = resp.keep_config()
    except protocol.ProtocolError as exc:
        config_claims.append(failed("config", f"the Keep's config does not decode: {exc.reason}"))
    if config is not None:
        config_claims.extend(_config_claims(config, expect))
    backend = expect.backend or (config.backend if config is not None else None)
    spec = facts.BACKENDS.get(backend or "")
    expected_kind = spec.evidence if spec else None
    expected_protection = spec.protection if spec else "hardware"

    # 2. The report data must bind our nonce, the Keep's HPKE key and that config.
    rd = protocol.report_data(expect.nonce, resp.hpke_public_key, config.digest()) if config else None

    # 3. The evidence itself, by the verifier for its kind.
    sim_trust = expect.sim_trust if expected_protection == "simulated" else None
    simulated_roots: list[bytes] | dict[bytes, str] = []
    if sim_trust is not None:
        simulated_roots = sim_trust.accepted
    elif trust.allow_simulated and expected_protection == "simulated" and resp.evidence_kind != "nil":
        from keepbook.keep.shared.evidence import simulated_roots as sim

        simulated_roots = sim.simulated_root_digests(resp.evidence_kind)
        if not simulated_roots:
            config_claims.append(unverified("simulated_root", "this installation has no simulated "
                                            f"{resp.evidence_kind} root to check the chain against"))
    reference = trust.reference_values()
    reference.report_data = rd
    launch_claim: Claim | None = None
    if spec is not None and spec.vm and spec.hardware and reference.measurement is None:
        # a VM Keep on hardware: the measurement it must show, computed from our own image
        reference.measurement, launch_claim = launch_measurement.expected_launch(
            backend, trust.snp_ovmf or None)
    pod_claims: list[Claim] = []
    pod_field: str | None = None
    if spec is not None and spec.pod:
        # a Keep pod: the init-data digest computed from what we expect, required; on hardware,
        # the Kata guest's launch measurement from the trust policy, required too
        pod_field, value, init_claim = coco_reference.expected_init_data(backend, trust)
        pod_claims.append(init_claim)
        if pod_field is not None and value is not None:
            setattr(reference, pod_field, value)
        if spec.hardware and reference.measurement is None and trust.require_measurement:
            pod_claims.append(coco_reference.missing_measurement(backend))
    if expected_protection != "hardware" and reference.measurement is None:
        # a process-based Keep runs this installation's keepbook code: that is its reference
        reference.measurement = measurement.measurement(facts.measurement_length(resp.evidence_kind))
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

    if sim_trust is not None:  # an unknown or changed simulated root: say so, and how to accept
        sim_trust.judge(vector)

    if expected_kind != resp.evidence_kind:
        vector.add(failed("evidence_kind", f"a {backend} Keep must return {expected_kind} evidence, "
                                           f"this one returned {resp.evidence_kind!r}"), required=True)

    # 4. Handshake claims derived from the report data check.
    rd_claim = vector.get("report_data")
    nonce_echo = hmac.compare_digest(resp.nonce, expect.nonce)
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
    vector.add(_suite_claim(resp), required=True)
    vector.extend(config_claims)
    vector.require(*[c.name for c in config_claims if c.status is not Status.UNVERIFIED])

    # 5. The protection level against the trust policy.
    if spec is not None and (spec.vm or spec.pod) and resp.evidence_kind == "nil":
        vector.boundary = "VM"  # its own VM, but nothing protects it: NO PROTECTION (VM)
    if spec is not None and spec.vm and resp.evidence_kind == "nil":
        image = _unless_required(_image_claim(config), trust.require_measurement)
        # required (with require_measurement) whenever there is a local image to compare
        vector.add(image, required=trust.require_measurement
                   and image.status is not Status.UNVERIFIED)
    for claim in pod_claims:  # the init-data binding: required whenever it can be checked
        vector.add(claim, required=claim.status is not Status.UNVERIFIED)
    if pod_field is not None and resp.evidence_kind != "nil":
        vector.require(pod_field)
    vector.add(_protection_claim(vector, resp.evidence_kind, trust, _whose_root(vector, sim_trust)),
               required=True)

    # 6. Which claims this policy requires.
    if resp.evidence_kind != "nil":
        vector.require("chain", "signature")
        if expected_protection == "hardware":  # the TCB judged with the collateral carried along
            vector.require(*carried.required_on_hardware(resp.evidence_kind))
        vector.require(*trust.required_reference_claims())  # each reference value given
        vm_on_hardware = spec is not None and (spec.vm or spec.pod) and spec.hardware
        if trust.require_measurement and (expected_protection != "hardware" or vm_on_hardware):
            vector.require("measurement")  # VM Keeps on hardware too: computed from the image
    if launch_claim is not None:
        vector.add(_unless_required(launch_claim, trust.require_measurement),
                   required=trust.require_measurement)
    return AttestationResult(vector=vector, response=resp, config=config, report_data=rd,
                             expectation=expect)


def _suite_claim(resp: protocol.AttestResponse) -> Claim:
    """The HPKE suite the Keep names must be one keepbook knows, and its key a key of that suite:
    the channel key is sealed with it (the key is bound by the report data, the suite's name is
    relayed by the host — a swapped name fails here, not as an internal error when sealing)."""
    try:
        sealing.check_public_key(resp.hpke_suite, resp.hpke_public_key)
    except sealing.SealingError as exc:
        return failed("hpke_suite", f"the Keep's channel key cannot be used: {exc}")
    return verified("hpke_suite", f"the channel key is sealed with HPKE {resp.hpke_suite} (RFC 9180)")


def _whose_root(vector: TrustVector, sim_trust: SimRootTrust | None) -> str:
    """Whose simulated root the chain ended in, as the trust vector says it."""
    chain = vector.get("chain")
    root = chain.detail.get("root") if chain is not None else None
    if sim_trust is not None and isinstance(root, str):
        from keepbook.keep.shared.evidence.certs import parse_fingerprint

        label = sim_trust.label(parse_fingerprint(root))
        if label:
            return f"{label} ({root[:23]}…)"
    return OWN_LABEL


def _protection_claim(vector: TrustVector, evidence_kind: str, trust: TrustPolicy,
                      whose: str = OWN_LABEL) -> Claim:
    prot = vector.protection
    if trust.require_hardware and prot != "hardware":
        return failed("protection", f"your trust policy requires hardware protection; this Keep "
                                    f"is {vector.label}")
    if prot == "none" and evidence_kind == "nil":
        what = ("a kvm Keep: its own VM, but nothing protects its memory from the host"
                if vector.boundary else "a nil Keep")
        if trust.allow_nil:
            return verified("protection", f"{vector.label}: {what}, accepted because your trust "
                                          "policy allows unsigned evidence (allow_nil)")
        return failed("protection", f"{vector.label} refused ({what}): your trust policy does not "
                                    "allow unsigned evidence (allow_nil = false)")
    if prot == "simulated":
        return verified("protection", f"SIMULATED: signed by the {whose} — no hardware protection "
                                      "(allow_simulated)", root=whose)
    chain = vector.get("chain")
    if prot == "hardware" and chain is not None and chain.detail.get("platform_key") == "user-supplied":
        return verified("protection", "hardware TEE evidence signed by a platform key from your "
                                      "trust policy (user-supplied: keepbook pins no vendor root "
                                      "for it)")
    if prot == "hardware":
        return verified("protection", "hardware TEE evidence chained to a pinned vendor root")
    if prot == "none":
        return failed("protection", f"nothing you trust vouches for this {evidence_kind} evidence "
                                    "(see the chain claim): it is neither hardware-protected nor an "
                                    "accepted SIMULATED Keep")
    return failed("protection", f"protection level {prot!r} is not acceptable")


def _unless_required(claim: Claim, required: bool) -> Claim:
    """A failed claim refuses the Keep; one your policy does not require is shown, unverified."""
    if not required and claim.status is Status.FAILED:
        return unverified(claim.name, claim.reason)
    return claim


def _image_claim(config: protocol.KeepConfig | None) -> Claim:
    """A VM Keep names the image it booted (unsigned: NO PROTECTION (VM)); compare it with
    the image this machine builds from its own checkout (``keepbook image build``)."""
    said = (config.runtime.get("image") if config is not None else None) or "(nothing)"
    try:
        local = vm_image.KeepImage.load(check_files=False)
    except vm_image.ImageError as exc:
        return unverified("image", f"the Keep says it booted image {said[:16]}…; there is no "
                                   f"image here to compare with ({exc})", image=said)
    stale = local.stale()
    if stale:
        return failed("image", f"the Keep says it booted image {said[:16]}…; {stale} to know "
                               "which image a Keep should run", image=said)
    if said == local.digest:
        return verified("image", f"the Keep says it booted image {said[:16]}…, the one this "
                                 "machine builds — nothing vouches for it (no TEE)", image=said)
    return failed("image", f"the Keep says it booted image {said[:16]}…, not the one this "
                           f"machine builds ({local.digest[:16]}…): the host runs other Keep code",
                  image=said, expected=local.digest)


def _config_claims(config: protocol.KeepConfig, expect: Expectation) -> list[Claim]:
    trust = expect.trust
    out = []
    if expect.backend is not None and config.backend != expect.backend:
        out.append(failed("config", f"the Keep says it is {config.backend!r}, you asked for "
                                    f"{expect.backend!r}"))
    elif expect.limits is not None and config.limits != dict(expect.limits):
        out.append(failed("config", "the Keep's attested limits differ from the ones you asked for"))
    else:
        out.append(verified("config", "backend and limits are the ones you asked for"
                            if expect.backend is not None else
                            f"backend {config.backend} (you named none); limits as attested",
                            runtime=dict(config.runtime)))
    if expect.profile is not None and config.profile != expect.profile:
        out.append(failed("profile", f"the Keep runs profile {config.profile!r}, not the "
                                     f"{expect.profile!r} you expect — the host changed it, or "
                                     "this is not the Keep you meant"))
    elif config.profile not in trust.accept_profiles:
        out.append(failed("profile", f"profile {config.profile!r} is not accepted by your trust "
                                     f"policy ({trust.source})"))
    elif config.profile == "debug":
        out.append(verified("profile", "debug — WARNING: this Keep may log cell details to the "
                                       "host; use staging or production for real data"))
    elif config.profile == "production":
        out.append(verified("profile", "production: the host sees lifecycle events only; you get "
                                       "only what the output policy releases (keep.release)"))
    else:
        out.append(verified("profile", f"{config.profile}: the host sees lifecycle events only"))
    if expect.keep_id is not None:
        if config.keep_id != expect.keep_id:
            out.append(failed("keep_id", f"the evidence is for Keep {config.keep_id!r}, not the Keep "
                                         f"{expect.keep_id!r} you are talking to — the host "
                                         "answered with another Keep"))
        else:
            out.append(verified("keep_id", f"the attested config names this Keep ({config.keep_id})"))
    fp = config.fingerprint()
    if expect.fingerprint is not None:
        if not hmac.compare_digest(fp, expect.fingerprint):
            out.append(failed("keep_fingerprint", f"this Keep's fingerprint is {fp}, not the "
                                                  f"{expect.fingerprint} you were given — it is "
                                                  "another Keep (a twin the host started?)"))
        else:
            out.append(verified("keep_fingerprint", f"the Keep's fingerprint is {fp}, as expected"))
    keys = config.keys or {}
    if keys:
        out.append(verified("keep_keys", "the Keep's dataset and audit keys are bound into the "
                                         "evidence (attested config)",
                            keys=", ".join(sorted(keys)), fingerprint=fp))
    if expect.output_policy is None:
        out.append(unverified("output_policy", "the Keep's output policy is not checked against one "
                                               "of yours (sealed datasets add their owner's rules)"))
    elif config.policy != expect.output_policy:
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


__all__ = ["Expectation", "ExpectationBuilder", "AttestationResult", "verify_attestation",
           "save_attestation"]
