"""The simulated roots a keep manager's Keeps sign with, announced — never held.

Runs on the untrusted host.  A class or a team shares one keep manager; its ``sim-*`` Keeps sign
their evidence with the simulated vendor roots of the *manager's* installation, which a user's
kernel does not know.  The manager therefore prints each root's fingerprint when it starts (the
operator hands them to the users, who compare before they accept one) and puts the root
certificates into its ``contracts`` answer.  The roots' keys stay with the simulated TEE
(``keep/inside/simulated_tee``): when they do not exist yet the manager has that module make
them, in a process of its own, and reads back only the certificates.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import IO, Iterable

from keepbook.keep.host import backends as backends_mod
from keepbook.keep.shared.evidence import simulated_roots
from keepbook.keep.shared.evidence.certs import cert_name, load_der

MAKE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class AnnouncedRoot:
    backend: str
    fingerprint: str
    certificate: bytes   # DER, self-signed
    name: str            # the root's common name, e.g. "SIMULATED ARK"


def _make_missing(kinds: list[str]) -> str | None:
    """Have the simulated TEE make the roots of ``kinds`` (same environment as the Keeps'); the
    reason if it could not."""
    try:
        r = subprocess.run([sys.executable, "-m", "keepbook.keep.inside.simulated_tee", *kinds],
                           env=backends_mod.env_for_wasmldr(), capture_output=True, text=True,
                           timeout=MAKE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not make them: {exc}"
    if r.returncode != 0:
        return f"could not make them: {(r.stderr.strip() or f'exit {r.returncode}')[-300:]}"
    return None


def announce(specs: Iterable[backends_mod.BackendSpec]) -> tuple[dict[str, AnnouncedRoot], list[str]]:
    """Each offered simulated backend's root (made first where missing); and the problems, one
    line per backend whose root could not be had (its Keeps then make it on first use)."""
    sims = [s for s in specs if s.facts.simulated]
    kinds = sorted({s.facts.evidence for s in sims})
    problems: list[str] = []
    missing = [k for k in kinds if simulated_roots.root_certificate(k) is None]
    why = _make_missing(missing) if missing else None
    roots: dict[str, AnnouncedRoot] = {}
    for spec in sims:
        der = simulated_roots.root_certificate(spec.facts.evidence)
        fingerprint = simulated_roots.root_fingerprint(spec.facts.evidence)
        if der is None or fingerprint is None:
            problems.append(f"{spec.name}: no simulated root in {simulated_roots.sim_roots_dir()} "
                            f"({why or 'not made yet'})")
            continue
        roots[spec.name] = AnnouncedRoot(spec.name, fingerprint, der, cert_name(load_der(der)))
    return roots, problems


def print_roots(roots: dict[str, AnnouncedRoot], problems: list[str], out: IO[str]) -> None:
    """The lines an operator reads out to the users (they compare before they accept a root)."""
    if roots:
        print("keepbook keepmgr: the simulated roots this manager's Keeps sign with — SIMULATED, no "
              "hardware protection.\nGive these fingerprints to your users; each compares before "
              "accepting one (`%keep new --trust-sim-root sha256:…`):", file=out)
        for r in roots.values():
            print(f"  {r.backend:<8} {r.fingerprint}  ({r.name})", file=out)
    for line in problems:
        print(f"keepbook keepmgr: {line}", file=out)
    out.flush()
