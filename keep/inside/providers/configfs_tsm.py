"""configfs-tsm (Linux ≥ 6.7): one interface for SEV-SNP, TDX and Arm CCA evidence.

Protocol (Documentation/ABI/testing/configfs-tsm): ``mkdir`` a report entry under
``/sys/kernel/config/tsm/report``, write the 64-byte report data to ``inblob``, read ``outblob``
(SNP report / TDX quote / CCA token) and ``auxblob`` (SNP certificate table), then read
``generation``: it counts writes to the entry, and a value other than ours means another process
wrote in between (the evidence may be for *its* report data) — retry.  ``provider`` names the
TEE.  A CCA realm's 64 bytes become the realm token's challenge; it has no auxblob.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .common import ProviderError, check_report_data, parse_cert_table

#: ``provider`` (the driver's KBUILD_MODNAME) → evidence kind; Arm's driver was renamed from
#: arm-cca-guest.c to arm-cca.c, so both module names occur
PROVIDERS = {"sev_guest": "sev-snp", "tdx_guest": "tdx", "arm_cca_guest": "cca", "arm_cca": "cca"}


class ConfigfsTsmProvider:
    BASE = Path("sys/kernel/config/tsm/report")

    def __init__(self, *, root: Path = Path("/"), expect: str | None = None, retries: int = 3):
        self.base = Path(root) / self.BASE
        self.expect = expect
        self.retries = retries

    @classmethod
    def available(cls, root: Path) -> bool:
        return (Path(root) / cls.BASE).is_dir()

    # file-system primitives (a fake configfs in tests overrides these)
    def _mkdir(self, p: Path) -> None:
        os.mkdir(p)

    def _rmdir(self, p: Path) -> None:
        os.rmdir(p)

    def _write(self, p: Path, data: bytes) -> None:
        with open(p, "wb", buffering=0) as f:
            f.write(data)

    def _read(self, p: Path) -> bytes:
        with open(p, "rb") as f:
            return f.read()

    def get_evidence(self, report_data: bytes) -> tuple[str, bytes, list[bytes]]:
        rd = check_report_data(report_data)
        entry = self.base / f"keepbook-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self._mkdir(entry)
        except OSError as e:
            raise ProviderError(f"cannot create {entry}: {e.strerror} (needs root or the "
                                "tsm report group)") from None
        try:
            for _ in range(self.retries):
                gen0 = self._gen(entry)
                self._write(entry / "inblob", rd)
                out = self._read(entry / "outblob")
                aux = self._read(entry / "auxblob") if (entry / "auxblob").exists() else b""
                if self._gen(entry) == gen0 + 1:
                    break
            else:
                raise ProviderError("another process kept writing to the configfs-tsm entry; "
                                    "the evidence could not be trusted to be ours")
            provider = self._read(entry / "provider").decode().strip()
        finally:
            try:
                self._rmdir(entry)
            except OSError:
                pass
        kind = PROVIDERS.get(provider)
        if kind is None:
            raise ProviderError(f"configfs-tsm provider {provider!r} is not supported")
        if self.expect and kind != self.expect:
            raise ProviderError(f"this machine's TEE is {kind}, not {self.expect}")
        if not out:
            raise ProviderError("configfs-tsm returned an empty outblob")
        certs = parse_cert_table(aux) if kind == "sev-snp" and aux else []
        return kind, out, certs

    def _gen(self, entry: Path) -> int:
        try:
            return int(self._read(entry / "generation").decode().strip() or 0)
        except ValueError:
            raise ProviderError("configfs-tsm generation is not a number") from None
