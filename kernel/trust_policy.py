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
    cca_platform_keys = ["~/cca/cpak.pem"]   # Arm CCA: the platform keys you trust (a file
                                    # path — relative to this file — or the PEM / JWK text
                                    # itself); keepbook pins no Arm root, so a hardware CCA
                                    # Keep needs one of these

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
from keepbook.keep.shared.evidence.public_keys import load_public_keys
from keepbook.keep.shared.evidence.reference import KEYS as REFERENCE_KEYS, parse_reference
from keepbook.keep.shared.evidence.trust import EvidenceError, ReferenceValues
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
    #: Arm CCA platform keys the user trusts: file paths, or PEM / JWK text
    cca_platform_keys: tuple[str, ...] = ()
    #: the Keep container image a coco-* Keep pod must run (REPOSITORY@sha256:…); "" = the
    #: published one pinned in keep/container/published.toml
    keep_container: str = ""
    #: the [reference] table, checked at load (read-only)
    reference: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "built-in default"
    #: ``cca_platform_keys`` read and parsed (DER SubjectPublicKeyInfo), filled when made
    platform_key_ders: tuple[bytes, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ders: list[bytes] = []
        for i, entry in enumerate(self.cca_platform_keys):
            ders += _platform_key(entry, f"trust policy {self.source}: cca_platform_keys[{i}]")
        object.__setattr__(self, "platform_key_ders", tuple(ders))

    def reference_values(self) -> ReferenceValues:
        """A fresh ReferenceValues from the [reference] table and the top-level switches."""
        ref = parse_reference(self.reference)
        ref.allow_debug = self.allow_debug
        ref.accept_tcb_status = tuple(self.accepted_tcb_status)
        ref.platform_keys = list(self.platform_key_ders)
        return ref

    def required_reference_claims(self) -> list[str]:
        """Claims the [reference] table asks to be verified."""
        names = {"measurement": "measurement", "host_data": "host_data", "mrsigner": "mrsigner",
                 "mrconfigid": "mrconfigid",
                 "rtmrs": "rtmrs", "min_tcb": "tcb", "vmpl": "vmpl",
                 "personalization": "personalization", "rems": "rems"}
        return [claim for key, claim in names.items() if key in self.reference]

    @classmethod
    def from_toml(cls, text: str, source: str = "<string>", base_dir: Path | None = None) -> "TrustPolicy":
        """``base_dir``: where relative key paths are found (the policy file's folder)."""
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TrustPolicyError(f"trust policy {source} is not valid TOML: {exc}") from None
        known = {f.name: f for f in fields(cls) if f.name not in ("source", "platform_key_ders")}
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
        if base_dir is not None and "cca_platform_keys" in kwargs:
            kwargs["cca_platform_keys"] = tuple(
                k if _is_inline_key(k) else str(base_dir / Path(k).expanduser())
                for k in kwargs["cca_platform_keys"])
        return cls(source=source, **kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "TrustPolicy":
        candidate = path or os.environ.get("KEEPBOOK_TRUST_POLICY")
        if candidate:
            p = Path(candidate).expanduser()
            if not p.is_file():
                raise TrustPolicyError(f"trust policy file {p} does not exist")
            return cls.from_toml(p.read_text(), str(p), p.parent)
        default = default_path()
        if default.is_file():
            return cls.from_toml(default.read_text(), str(default), default.parent)
        return cls()


def default_path() -> Path:
    """Where the trust policy is read from when no file is named."""
    return user_config_dir() / "trust.toml"


def _is_inline_key(entry: str) -> bool:
    return "-----BEGIN" in entry or entry.lstrip().startswith("{")


def _platform_key(entry: str, what: str) -> list[bytes]:
    """One ``cca_platform_keys`` entry (a path, or PEM / JWK text) → DER SubjectPublicKeyInfo."""
    if _is_inline_key(entry):
        data = entry.encode()
    else:
        path = Path(entry).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TrustPolicyError(f"{what}: cannot read {path}: {exc.strerror or exc} — give the "
                                   "path of your CCA platform key (PEM or JWK), or its text") from None
    try:
        return load_public_keys(data)
    except EvidenceError as exc:
        raise TrustPolicyError(f"{what}: {exc}") from None
