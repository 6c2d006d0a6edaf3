"""Structured verification results: a trust vector of claims, never a boolean.

Modelled on EAR (IETF RATS "EAT Attestation Results") and on pyca/cryptography's habit of
returning structured answers: every claim is ``verified``, ``failed`` or ``unverified``, always
with a reason a user can act on.  A verifier never passes a claim silently.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, Mapping, Protocol, Sequence


class Status(str, Enum):
    VERIFIED = "verified"
    FAILED = "failed"
    UNVERIFIED = "unverified"

    @property
    def mark(self) -> str:
        return {"verified": "✔", "failed": "✗", "unverified": "?"}[self.value]


@dataclass(frozen=True)
class Claim:
    """One checked statement about the evidence."""

    name: str
    status: Status
    reason: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status.value, "reason": self.reason}
        if self.detail:
            out["detail"] = {k: _jsonable(v) for k, v in self.detail.items()}
        return out


def verified(name: str, reason: str, **detail: Any) -> Claim:
    return Claim(name, Status.VERIFIED, reason, detail)


def failed(name: str, reason: str, **detail: Any) -> Claim:
    return Claim(name, Status.FAILED, reason, detail)


def unverified(name: str, reason: str, **detail: Any) -> Claim:
    return Claim(name, Status.UNVERIFIED, reason, detail)


def compare_value(name: str, got: bytes, want: bytes | None, what: str, why: str) -> Claim:
    """A measured value against the user's expected one: unverified when none is given."""
    if want is None:
        return unverified(name, f"{what} {got.hex()[:32]}…; no expected value given")
    if got == bytes(want):
        return verified(name, f"{what} matches the expected value")
    return failed(name, f"{what} does not match the expected value: {why} "
                  f"(got {got.hex()[:16]}…, expected {bytes(want).hex()[:16]}…)")


def relaxable(name: str, ok: bool, ok_reason: str, problem: str, fix: str, allowed: bool,
              policy_key: str) -> Claim:
    """A rule only the user's trust policy may relax: verified when it holds, verified with the
    problem spelled out when ``policy_key`` allows it, failed (naming the fix and the key) else."""
    if ok:
        return verified(name, ok_reason)
    if allowed:
        return verified(name, f"{problem} — accepted because your trust policy sets {policy_key} = true")
    return failed(name, f"{problem}; {fix} (or set {policy_key} = true in your trust policy to "
                  "accept it)")


PROTECTION_LABEL = {
    "hardware": "PROTECTED",
    "simulated": "SIMULATED — no hardware protection",
    "none": "NO PROTECTION",
}


@dataclass
class TrustVector:
    """The result of verifying one piece of evidence (and, in the handshake, its binding).

    ``kind`` is the evidence kind (``sev-snp``, ``tdx``, ``sgx``, ``cca``, ``nil``).  ``protection`` is what
    the evidence can prove at best: ``hardware``, ``simulated`` (signed by a simulated vendor root)
    or ``none``.  ``required`` names the claims that must be ``verified`` for :attr:`ok`.
    ``fields`` holds parsed evidence fields for display (``%attest --explain``).
    """

    kind: str
    protection: str
    claims: list[Claim] = field(default_factory=list)
    required: set[str] = field(default_factory=set)
    fields: list[tuple[str, str, str]] = field(default_factory=list)  # (name, value, explanation)
    #: what separates the Keep from its host when nothing protects it: "VM" for a Keep that is
    #: its own plain virtual machine (label NO PROTECTION (VM)); "" for a process
    boundary: str = ""

    def add(self, claim: Claim, *, required: bool = False) -> Claim:
        self.claims.append(claim)
        if required:
            self.required.add(claim.name)
        return claim

    def extend(self, claims: Iterable[Claim]) -> None:
        for c in claims:
            self.add(c)

    def replace(self, claim: Claim) -> None:
        """Put ``claim`` in the place of the claim of the same name (added if there is none):
        the caller knows better why it failed, and how to fix it, than the evidence verifier."""
        for i, c in enumerate(self.claims):
            if c.name == claim.name:
                self.claims[i] = claim
                return
        self.claims.append(claim)

    def require(self, *names: str) -> None:
        self.required.update(names)

    def get(self, name: str) -> Claim | None:
        for c in self.claims:
            if c.name == name:
                return c
        return None

    @property
    def failures(self) -> list[Claim]:
        """Claims that failed, plus required claims that are not verified (or are missing)."""
        out = [c for c in self.claims if c.status is Status.FAILED]
        for name in sorted(self.required):
            c = self.get(name)
            if c is None:
                out.append(failed(name, "required claim was not checked"))
            elif c.status is Status.UNVERIFIED:
                out.append(failed(name, f"required but unverified: {c.reason}"))
        return out

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def label(self) -> str:
        base = PROTECTION_LABEL.get(self.protection, self.protection.upper())
        return f"{base} ({self.boundary})" if self.boundary and self.protection == "none" else base

    def first_failure(self) -> str:
        f = self.failures
        return f"{f[0].name}: {f[0].reason}" if f else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": self.ok,
            "kind": self.kind,
            "protection": self.protection,
            "label": self.label,
            "claims": [c.to_json() for c in self.claims],
            "required": sorted(self.required),
            "fields": [{"name": n, "value": v, "explanation": e} for n, v, e in self.fields],
        }

    def to_text(self) -> str:
        width = max([len(c.name) for c in self.claims] + [5])
        lines = [f"Trust vector ({self.kind}) — {self.label}",
                 f"{'':2}{'claim':<{width}}  {'status':<10}  reason"]
        for c in self.claims:
            req = "*" if c.name in self.required else " "
            lines.append(f"{c.status.mark}{req}{c.name:<{width}}  {c.status.value:<10}  {c.reason}")
        lines.append("(* = required by your trust policy)")
        lines.append("RESULT: " + ("VERIFIED" if self.ok else f"REJECTED — {self.first_failure()}"))
        return "\n".join(lines)


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, (_dt.datetime, _dt.date)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


#: the simulated roots a caller accepts: SPKI SHA-256 digests, or digest → whose root it is
#: (the label the chain claim shows)
SimulatedRoots = Sequence[bytes] | Mapping[bytes, str]


class EvidenceError(ValueError):
    """Evidence (or a certificate, or collateral) cannot be parsed at all: unusable input."""


@dataclass
class ReferenceValues:
    """What the verifier compares evidence against.  ``None`` = not checked (→ unverified)."""

    report_data: bytes | None = None
    measurement: bytes | None = None          # SNP MEASUREMENT, TDX MRTD, SGX MRENCLAVE, CCA RIM
    host_data: bytes | None = None            # SNP HOST_DATA
    mrconfigid: bytes | None = None           # TDX MRCONFIGID (48 bytes)
    mrsigner: bytes | None = None             # SGX MRSIGNER
    rtmrs: Sequence[bytes | None] | None = None  # TDX RTMR0..3
    allow_debug: bool = False
    min_tcb: Mapping[str, int] | None = None  # SNP: bootloader/tee/snp/microcode(/fmc)
    vmpl: int | None = None
    allow_smt: bool = True
    allow_migration_agent: bool = False
    accept_tcb_status: Sequence[str] = ("UpToDate",)
    allow_sept_ve: bool = False               # TDX: accept SEPT_VE_DISABLE clear
    allow_reserved_td_attributes: bool = False  # TDX: accept reserved TD attribute bits set
    allow_service_td: bool = False            # TDX 1.5: accept a non-zero MRSERVICETD
    personalization: bytes | None = None      # CCA realm personalization value (64 bytes)
    rems: Sequence[bytes | None] | None = None  # CCA REM0..3
    #: CCA: the platform keys the user trusts (DER SubjectPublicKeyInfo or certificates) — the
    #: anchor where no vendor root is pinned; never taken from the evidence
    platform_keys: Sequence[bytes] | None = None


class Verifier(Protocol):
    """One per evidence kind.  Pure: no network, no clock except the ``at`` given."""

    kind: str

    def verify(self, evidence: bytes, *, certs: Sequence[bytes] = (),
               collateral: Mapping[str, Any] | None = None,
               reference: ReferenceValues | None = None,
               simulated_roots: SimulatedRoots = (),
               at: _dt.datetime | None = None) -> TrustVector:
        """Verify ``evidence``.  ``certs`` are DER certificates that came with it (or from
        ``--certs``).  The vendor roots pinned in the code (SHA-256 of the DER
        SubjectPublicKeyInfo) are always trusted and give ``protection="hardware"``;
        ``simulated_roots`` (same digest form) are accepted in addition only when the caller's
        trust policy allows simulation, and a chain ending in one gives ``protection="simulated"``
        (a mapping labels each: whose root it is).  The chain claim's detail names the root the
        chain reached (``root = sha256:…``), trusted or not."""
        ...
