"""The user's trust policy: which evidence the client accepts.  Independent of the Keep's
profile (what the Keep does with outputs): a production profile on a simulated Keep is fine for
a demo, and is labelled SIMULATED.

TOML, from ``--trust-policy FILE``, ``$KEEPBOOK_TRUST_POLICY`` or
``~/.config/keepbook/trust.toml``; every key is optional::

    require_hardware = false        # true: refuse nil and simulated Keeps
    allow_simulated = true          # accept sim-* evidence signed by this installation's roots
    allow_nil = true                # accept nil Keeps (NO PROTECTION), labelled as such
    accept_profiles = ["staging", "production", "debug"]   # debug is shown with a warning
    require_measurement = true      # the Keep must run the same keepbook code as this client
    allow_debug = false             # refuse evidence from a TEE in debug mode
    accepted_tcb_status = ["UpToDate"]
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class TrustPolicyError(ValueError):
    pass


@dataclass
class TrustPolicy:
    require_hardware: bool = False
    allow_simulated: bool = True
    allow_nil: bool = True
    accept_profiles: list[str] = field(default_factory=lambda: ["staging", "production", "debug"])
    require_measurement: bool = True
    allow_debug: bool = False
    accepted_tcb_status: list[str] = field(default_factory=lambda: ["UpToDate"])
    source: str = "built-in default"

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
        for name, value in raw.items():
            default = getattr(cls(), name)
            if isinstance(default, bool) and not isinstance(value, bool):
                raise TrustPolicyError(f"trust policy {source}: {name} must be true or false")
            if isinstance(default, list) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise TrustPolicyError(f"trust policy {source}: {name} must be a list of strings")
            kwargs[name] = value
        bad = set(kwargs.get("accept_profiles", [])) - {"debug", "staging", "production"}
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
        default = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "keepbook" / "trust.toml"
        if default.is_file():
            return cls.from_toml(default.read_text(), str(default))
        return cls()
