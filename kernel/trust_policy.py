"""The user's trust policy: which evidence the client accepts.  Independent of the Keep's
profile (what the Keep does with outputs): a production profile on a simulated Keep is fine for
a demo, and is labelled SIMULATED.

TOML, from ``--trust-policy FILE``, ``$KEEPBOOK_TRUST_POLICY`` or
``~/.config/keepbook/trust.toml``; every key is optional::

    require_hardware = false        # true: refuse nil and simulated Keeps
    allow_simulated = true          # accept sim-* evidence signed by this installation's roots
    simulated_roots = ["sha256:…"]  # and by these other simulated roots (a teacher's keep
                                    # manager, say: `keepbook keepmgr` prints their fingerprints)
    allow_nil = true                # accept nil Keeps (NO PROTECTION), labelled as such
    accept_profiles = ["staging", "production", "debug"]   # debug is shown with a warning
    require_measurement = true      # the Keep must run the same keepbook code as this client;
                                    # an snp Keep: the launch measurement computed from the
                                    # Keep image this machine builds (kernel/launch_measurement.py)
    snp_ovmf = "/usr/share/ovmf/OVMF.amdsev.fd"   # the AmdSev OVMF the host boots snp Keeps with
    keep_container = "REPOSITORY@sha256:…"         # the image coco-* Keep pods must run: the
                                    # client requires the init-data digest computed from it
    allow_debug = false             # refuse evidence from a TEE in debug mode
    accepted_tcb_status = ["UpToDate"]

    [reference]                     # what a hardware Keep's evidence must show (each one given
    measurement = "hex…"            # becomes a required claim); same keys as `keepbook verify
    host_data = "hex…"              # --policy`: measurement, host_data, mrconfigid, mrsigner, rtmrs,
    min_tcb = { snp = 8, microcode = 115 }   # min_tcb, vmpl, allow_smt, allow_migration_agent
    vmpl = 0
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from keepbook.keep.shared.facts import PROFILES
from keepbook.keep.shared.evidence.certs import parse_fingerprint
from keepbook.keep.shared.evidence.reference import KEYS as REFERENCE_KEYS, parse_reference
from keepbook.keep.shared.evidence.trust import ReferenceValues
from keepbook.keep.shared.pod_keep import ImageRef


class TrustPolicyError(ValueError):
    pass


def user_config_dir() -> Path:
    """``$XDG_CONFIG_HOME/keepbook`` (default ``~/.config/keepbook``): the trust policy, the
    owner key and the known simulated roots live there."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "keepbook"


@dataclass(frozen=True)
class TrustPolicy:
    """Immutable: a verification is given one and cannot change it."""

    require_hardware: bool = False
    allow_simulated: bool = True
    allow_nil: bool = True
    accept_profiles: tuple[str, ...] = PROFILES
    require_measurement: bool = True
    allow_debug: bool = False
    accepted_tcb_status: tuple[str, ...] = ("UpToDate",)
    #: fingerprints (sha256:…) of simulated roots accepted from any keep manager
    simulated_roots: tuple[str, ...] = ()
    snp_ovmf: str = ""     # "" = $KEEPBOOK_SNP_OVMF or /usr/share/ovmf/OVMF.amdsev.fd
    #: the Keep container image a coco-* Keep pod must run (REPOSITORY@sha256:…); "" = the
    #: published one pinned in keep/container/published.toml
    keep_container: str = ""
    #: the [reference] table, checked at load (read-only)
    reference: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "built-in default"

    def reference_values(self) -> ReferenceValues:
        """A fresh ReferenceValues from the [reference] table and the top-level switches."""
        ref = parse_reference(self.reference)
        ref.allow_debug = self.allow_debug
        ref.accept_tcb_status = tuple(self.accepted_tcb_status)
        return ref

    def required_reference_claims(self) -> list[str]:
        """Claims the [reference] table asks to be verified."""
        names = {"measurement": "measurement", "host_data": "host_data", "mrsigner": "mrsigner",
                 "mrconfigid": "mrconfigid",
                 "rtmrs": "rtmrs", "min_tcb": "tcb", "vmpl": "vmpl",
                 "personalization": "personalization", "rems": "rems"}
        return [claim for key, claim in names.items() if key in self.reference]

    @classmethod
    def from_toml(cls, text: str, source: str = "<string>") -> "TrustPolicy":
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TrustPolicyError(f"trust policy {source} is not valid TOML: {exc}") from None
        known = {f.name: f for f in fields(cls) if f.name != "source"}
        unknown = set(raw) - set(known)
        if unknown:
            raise TrustPolicyError(f"trust policy {source}: unknown key(s) {', '.join(sorted(unknown))}; "
                                   f"known keys: {', '.join(sorted(known))}")
        kwargs: dict[str, Any] = {}
        if "reference" in raw:
            ref = raw["reference"]
            if not isinstance(ref, dict):
                raise TrustPolicyError(f"trust policy {source}: [reference] must be a table")
            extra = set(ref) - (REFERENCE_KEYS - {"report_data", "allow_debug", "accept_tcb_status"})
            if extra:
                raise TrustPolicyError(f"trust policy {source}: unknown [reference] key(s) "
                                       f"{', '.join(sorted(extra))}")
            try:
                parse_reference(ref)
            except ValueError as exc:
                raise TrustPolicyError(f"trust policy {source}: [reference] {exc}") from None
        for name, value in raw.items():
            if name == "reference":
                kwargs[name] = MappingProxyType(dict(value))
                continue
            default = getattr(cls(), name)
            if isinstance(default, bool) and not isinstance(value, bool):
                raise TrustPolicyError(f"trust policy {source}: {name} must be true or false")
            if isinstance(default, str) and not isinstance(value, str):
                raise TrustPolicyError(f"trust policy {source}: {name} must be a string (a path)")
            if isinstance(default, tuple):
                if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    raise TrustPolicyError(f"trust policy {source}: {name} must be a list of strings")
                value = tuple(value)
            kwargs[name] = value
        for fp in kwargs.get("simulated_roots", ()):
            try:
                parse_fingerprint(fp)
            except ValueError as exc:
                raise TrustPolicyError(f"trust policy {source}: simulated_roots: {exc}") from None
        if kwargs.get("keep_container"):
            try:
                ImageRef.parse(kwargs["keep_container"])
            except ValueError as exc:
                raise TrustPolicyError(f"trust policy {source}: keep_container: {exc}") from None
        bad = set(kwargs.get("accept_profiles", [])) - set(PROFILES)
        if bad:
            raise TrustPolicyError(f"trust policy {source}: unknown profile(s) {', '.join(sorted(bad))}")
        return cls(source=source, **kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "TrustPolicy":
        candidate = path or os.environ.get("KEEPBOOK_TRUST_POLICY")
        if candidate:
            p = Path(candidate).expanduser()
            if not p.is_file():
                raise TrustPolicyError(f"trust policy file {p} does not exist")
            return cls.from_toml(p.read_text(), str(p))
        default = default_path()
        if default.is_file():
            return cls.from_toml(default.read_text(), str(default))
        return cls()


def default_path() -> Path:
    """Where the trust policy is read from when no file is named."""
    return user_config_dir() / "trust.toml"
