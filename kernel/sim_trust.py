"""Simulated roots a user accepted on purpose, per keep manager — like SSH's known_hosts.

Runs on the user's machine.  A ``sim-*`` Keep's evidence is signed by the simulated vendor root
of the installation that runs the Keep.  This installation's own roots (the embedded manager's
Keeps) are trusted as they always were.  Any other simulated root — a teacher's keep manager, a
team's server — is trusted only when the user accepted *that* root: with
``%keep new … --trust-sim-root sha256:…`` or ``simulated_roots = ["sha256:…"]`` in the trust
policy.  Once a Keep's evidence has chained to it, the root is remembered for that manager in
``~/.config/keepbook/known_sim_roots`` (or ``$KEEPBOOK_KNOWN_SIM_ROOTS``)::

    # manager                 kind     root fingerprint    accepted
    https://10.0.0.5:8473     sev-snp  sha256:3ddf…        2026-03-02T09:14:00Z --trust-sim-root

A first attestation against an unknown simulated root fails, showing its fingerprint and the
exact ways to accept it; a manager whose root differs from the one remembered for it fails
loudly, whatever else was accepted.  Never a silent accept.  Still SIMULATED: accepting a root
says whose simulated Keep it is, not that anything protects it.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from keepbook.keep.shared.evidence.certs import format_fingerprint, parse_fingerprint
from keepbook.keep.shared.evidence.trust import Status, TrustVector, failed
from keepbook.kernel.trust_policy import user_config_dir

KNOWN_ENV = "KEEPBOOK_KNOWN_SIM_ROOTS"
KNOWN_HEADER = ("# keepbook: simulated roots you accepted, one line per keep manager and evidence "
                "kind (like ~/.ssh/known_hosts).\n# Delete a line to forget a root.\n")
OWN_LABEL = "SIMULATED root of this installation"


class KnownRootsError(ValueError):
    """The known roots file cannot be read; names the file and the line."""


def known_file() -> Path:
    return Path(os.environ.get(KNOWN_ENV) or user_config_dir() / "known_sim_roots").expanduser()


def manager_key(url: str) -> str:
    """One written form of a manager's address: ``scheme://host:port[/path]`` (host lower case,
    default ports spelled out), so the same manager is found however its URL was typed."""
    parts = urlsplit(url.strip())
    scheme = (parts.scheme or "http").lower()
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        port = 0
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    path = "".join(c if c.isprintable() and not c.isspace() else f"%{ord(c):02X}"
                   for c in parts.path.rstrip("/"))
    return f"{scheme}://{host}:{port}{path}"


@dataclass(frozen=True)
class KnownRoot:
    manager: str
    kind: str
    digest: bytes
    line: int
    note: str = ""

    @property
    def fingerprint(self) -> str:
        return format_fingerprint(self.digest)


def parse_known(text: str, source: str) -> list[KnownRoot]:
    """The known roots file → its entries.  A line that is not ``MANAGER KIND sha256:… [note]``,
    or two lines giving one manager and kind different roots, make the file unusable (fail
    closed): the error names the line to fix."""
    out: list[KnownRoot] = []
    seen: dict[tuple[str, str], KnownRoot] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.strip().split(maxsplit=3)
        if not words or words[0].startswith("#"):
            continue
        if len(words) < 3:
            raise KnownRootsError(f"{source} line {number}: expected MANAGER KIND sha256:… — fix or "
                                  "delete that line")
        try:
            digest = parse_fingerprint(words[2])
        except ValueError as exc:
            raise KnownRootsError(f"{source} line {number}: {exc} — fix or delete that line") from None
        entry = KnownRoot(manager_key(words[0]), words[1], digest, number,
                          words[3] if len(words) > 3 else "")
        twin = seen.get((entry.manager, entry.kind))
        if twin is not None and twin.digest != digest:
            raise KnownRootsError(f"{source} lines {twin.line} and {number} give {entry.manager} two "
                                  f"different {entry.kind} roots — delete the one you did not accept")
        seen[(entry.manager, entry.kind)] = entry
        out.append(entry)
    return out


def lookup(manager: str, kind: str, path: Path | None = None) -> KnownRoot | None:
    path = path or known_file()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise KnownRootsError(f"cannot read {path}: {exc}") from None
    hits = [e for e in parse_known(text, str(path)) if e.manager == manager and e.kind == kind]
    return hits[0] if hits else None


def remember(manager: str, kind: str, digest: bytes, how: str, path: Path | None = None) -> KnownRoot:
    """Append one accepted root (file 0600, folder 0700; one write, so two kernels cannot
    interleave their lines)."""
    path = path or known_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    new = not path.exists()
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f"{manager} {kind} {format_fingerprint(digest)} {when} {how}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as fh:
        fh.write((KNOWN_HEADER if new else "") + line)
    known = lookup(manager, kind, path)
    if known is None:
        raise KnownRootsError(f"{path}: the line just written for {manager} cannot be read back")
    return known


@dataclass(frozen=True)
class SimRootTrust:
    """Which simulated roots one Keep's evidence may chain to, and why.  Built by the client
    agent at ``%keep new`` (it reads the files); used by the pure verification."""

    manager: str | None                 # manager_key(); None: the embedded manager
    kind: str                           # the evidence kind (sev-snp, tdx, sgx)
    allowed: bool                       # the trust policy allows simulated Keeps at all
    own: tuple[bytes, ...] = ()         # this installation's roots for ``kind``
    remembered: KnownRoot | None = None
    explicit: Mapping[bytes, str] = field(default_factory=dict)   # digest → how it was accepted
    known_path: str = ""
    accept_command: str = "%keep new --trust-sim-root {fingerprint}"
    policy_path: str = ""
    #: the root the manager's ``contracts`` says its Keeps sign with (shown, never trusted for it)
    announced: bytes | None = None

    def _whose(self) -> str:
        return f"the keep manager at {self.manager}" if self.manager else "your keep manager"

    def label(self, digest: bytes) -> str | None:
        """Whose root ``digest`` is, if accepted (the trust vector shows it); else None."""
        if not self.allowed:
            return None
        if digest in self.own:
            return OWN_LABEL
        if self.remembered is not None and digest == self.remembered.digest:
            return (f"SIMULATED root of {self._whose()}, accepted before ({self.known_path} "
                    f"line {self.remembered.line})")
        if digest in self.explicit:
            return f"SIMULATED root of {self._whose()}, accepted {self.explicit[digest]}"
        return None

    @property
    def accepted(self) -> dict[bytes, str]:
        """digest → label of every root the evidence may chain to (for the verifier)."""
        candidates = [*self.own, *([self.remembered.digest] if self.remembered else []), *self.explicit]
        return {d: label for d in candidates if (label := self.label(d)) is not None}

    def changed(self, digest: bytes) -> str | None:
        """The loud refusal when ``digest`` is not the root remembered for this manager."""
        if self.remembered is None or digest == self.remembered.digest or digest in self.own:
            return None
        return (f"THE SIMULATED {self.kind} ROOT HAS CHANGED for {self._whose()}: you "
                f"accepted {self.remembered.fingerprint} ({self.known_path} line "
                f"{self.remembered.line}), but this one is {format_fingerprint(digest)}. Either its "
                "operator made new simulated roots, or someone else answers at this address. "
                f"Nothing was sent. Only if the operator confirms the new fingerprint: delete line "
                f"{self.remembered.line} of {self.known_path}, then accept the new root")

    def first_contact(self, digest: bytes, root_name: str) -> str:
        fp = format_fingerprint(digest)
        if not self.allowed:
            return (f"this Keep's evidence is signed by a SIMULATED root ({root_name}, {fp}) and "
                    "your trust policy does not allow simulated Keeps (allow_simulated = false or "
                    "require_hardware = true): use a hardware Keep, or change that policy")
        return (f"this Keep's evidence is signed by a SIMULATED root you have not accepted: "
                f"'{root_name}' of {self._whose()}, fingerprint {fp}. A simulated Keep has no "
                "hardware protection; accept its root only if this is the fingerprint the keep "
                "manager's operator announced (`keepbook keepmgr` prints it when it starts). To "
                f"accept it on purpose: `{self.accept_command.replace('{fingerprint}', fp)}`, or add "
                f"simulated_roots = [\"{fp}\"] to your trust policy ({self.policy_path}). Once a Keep "
                f"has attested with it, it is remembered for this keep manager in {self.known_path}")

    def announcement(self) -> str | None:
        """What ``%keep new`` tells about the root the manager announced."""
        if self.announced is None or self.manager is None:
            return None
        fp = format_fingerprint(self.announced)
        label = self.label(self.announced)
        if label is not None:
            return f"SIMULATED Keep: the manager signs {self.kind} evidence with {fp} — the {label}"
        return (f"SIMULATED Keep: the manager says it signs {self.kind} evidence with the simulated "
                f"root {fp}, which you have not accepted — compare it with the fingerprint its "
                "operator announced; `%attest` shows how to accept it")

    def judge(self, vector: TrustVector) -> None:
        """Rewrite the chain claim when the chain reached a simulated root that is not accepted
        (first contact: how to accept it) or not the one remembered (changed: loud)."""
        chain = vector.get("chain")
        root = chain.detail.get("root") if chain is not None else None
        if chain is None or not isinstance(root, str):
            return
        digest = parse_fingerprint(root)
        why = self.changed(digest)
        if why is None and chain.status is Status.FAILED and chain.detail.get("root_trusted") is False:
            why = self.first_contact(digest, str(chain.detail.get("root_name", "a simulated root")))
        if why is not None:
            vector.replace(failed("chain", why, **chain.detail))
            vector.require("chain")
            vector.protection = "none"

    def to_remember(self, vector: TrustVector) -> bytes | None:
        """The root to remember for this manager after ``vector`` verified: one the user accepted
        explicitly, not yet remembered, not this installation's own."""
        chain = vector.get("chain")
        root = chain.detail.get("root") if chain is not None else None
        if self.manager is None or not vector.ok or not isinstance(root, str):
            return None
        digest = parse_fingerprint(root)
        if digest in self.own or (self.remembered and self.remembered.digest == digest):
            return None
        return digest if digest in self.explicit else None

