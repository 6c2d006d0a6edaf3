"""AMD SEV-SNP ATTESTATION_REPORT (versions 2, 3, 5): the one parser and builder.

Layout from AMD's SEV-SNP Firmware ABI specification (Table "ATTESTATION_REPORT Structure").
Version 2 is Milan/Genoa firmware before 1.55; version 3 adds CPUID family/model/stepping at
0x188; version 5 adds the launch/current mitigation vectors at 0x1F8/0x200.  Turin encodes its
TCB_VERSION differently (FMC first, SNP in byte 3).  The signature covers bytes 0x000–0x29F; r and
s are 72-byte little-endian integers; everything after them is reserved and must be zero.

The verifier, the simulator (``build``) and ``%attest --explain`` (``explain``) all use this.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields, replace

from .trust import EvidenceError

REPORT_SIZE = 0x4A0
SIGNED_END = 0x2A0
SIG_R, SIG_S, SIG_END = 0x2A0, 0x2E8, 0x330
SUPPORTED_VERSIONS = (2, 3, 5)
SIG_ALGO_ECDSA_P384_SHA384 = 1

# POLICY bits
POLICY_SMT = 1 << 16
POLICY_RESERVED_ONE = 1 << 17
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20

POLICY_MBZ = ~((1 << 26) - 1) & (2**64 - 1)   # bits 63:26 must be zero (ABI spec, go-sev-guest)

SIGNING_KEYS = {0: "VCEK", 1: "VLEK", 7: "none"}   # 2–6 are reserved
SIGNER_INFO_RESERVED = ~0x1F & 0xFFFFFFFF          # FLAGS bits 31:5 must be zero

#: CPUID family → product (report v3+ carry it; v2 reports come from Milan or Genoa)
TURIN_FAMILY = 0x1A


def product_from_cpuid(family: int, model: int) -> str | None:
    """The SNP product for a CPUID family/model, or None when unknown/absent."""
    if family == 0x19:
        if model <= 0x0F:
            return "Milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "Genoa"
    if family == TURIN_FAMILY and (model <= 0x1F or 0x40 <= model <= 0x4F):
        return "Turin"
    return None


@dataclass(frozen=True)
class TcbVersion:
    """One TCB_VERSION: security patch levels of each firmware component."""

    bootloader: int = 0
    tee: int = 0
    snp: int = 0
    microcode: int = 0
    fmc: int | None = None          # Turin only
    turin: bool = False

    @classmethod
    def from_bytes(cls, raw: bytes, *, turin: bool) -> "TcbVersion":
        if turin:  # fmc, bl, tee, snp, rsvd[3], ucode
            return cls(bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0],
                       turin=True)
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])  # bl, tee, rsvd[4], snp, ucode

    def to_bytes(self) -> bytes:
        if self.turin:
            return bytes([self.fmc or 0, self.bootloader, self.tee, self.snp, 0, 0, 0, self.microcode])
        return bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])

    def as_dict(self) -> dict[str, int]:
        d = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp,
             "microcode": self.microcode}
        if self.turin:
            d["fmc"] = self.fmc or 0
        return d

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.as_dict().items())


@dataclass(frozen=True)
class SnpReport:
    """Every field of the report (raw bytes for the TCB fields: their layout depends on product)."""

    version: int = 5
    guest_svn: int = 0
    policy: int = POLICY_SMT | POLICY_RESERVED_ONE
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    vmpl: int = 0
    signature_algo: int = SIG_ALGO_ECDSA_P384_SHA384
    current_tcb: bytes = bytes(8)
    platform_info: int = 0
    flags: int = 0                   # bit0 AUTHOR_KEY_EN, bit1 MASK_CHIP_KEY, bits2-4 SIGNING_KEY
    report_data: bytes = bytes(64)
    measurement: bytes = bytes(48)
    host_data: bytes = bytes(32)
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    report_id: bytes = bytes(32)
    report_id_ma: bytes = b"\xff" * 32
    reported_tcb: bytes = bytes(8)
    cpuid_fam_id: int = 0
    cpuid_mod_id: int = 0
    cpuid_step: int = 0
    chip_id: bytes = bytes(64)
    committed_tcb: bytes = bytes(8)
    current_build: int = 0
    current_minor: int = 0
    current_major: int = 0
    committed_build: int = 0
    committed_minor: int = 0
    committed_major: int = 0
    launch_tcb: bytes = bytes(8)
    launch_mit_vector: int = 0
    current_mit_vector: int = 0
    sig_r: int = 0
    sig_s: int = 0
    raw: bytes = field(default=b"", compare=False, repr=False)

    # -- derived -------------------------------------------------------------------------------
    @property
    def signed_bytes(self) -> bytes:
        return (self.raw or self.to_bytes())[:SIGNED_END]

    @property
    def signing_key(self) -> str:
        return SIGNING_KEYS.get(self.signing_key_value, f"reserved({self.signing_key_value})")

    @property
    def signing_key_value(self) -> int:
        """SIGNER_INFO.SIGNING_KEY (FLAGS bits 4:2): 0 VCEK, 1 VLEK, 7 none, 2–6 reserved."""
        return (self.flags >> 2) & 7

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.flags & 2)

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def product(self) -> str | None:
        """Product from the CPUID fields (version ≥ 3), else None."""
        if self.version >= 3:
            return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)
        return None

    @property
    def is_turin(self) -> bool:
        return self.version >= 3 and self.cpuid_fam_id == TURIN_FAMILY

    def tcb(self, name: str = "reported_tcb", *, turin: bool | None = None) -> TcbVersion:
        return TcbVersion.from_bytes(getattr(self, name), turin=self.is_turin if turin is None else turin)

    # -- serialisation -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Byte-exact serialisation (including the signature)."""
        b = bytearray(REPORT_SIZE)
        struct.pack_into("<IIQ", b, 0x00, self.version, self.guest_svn, self.policy)
        b[0x10:0x20] = _fixed(self.family_id, 16, "family_id")
        b[0x20:0x30] = _fixed(self.image_id, 16, "image_id")
        struct.pack_into("<II", b, 0x30, self.vmpl, self.signature_algo)
        b[0x38:0x40] = _fixed(self.current_tcb, 8, "current_tcb")
        struct.pack_into("<QI", b, 0x40, self.platform_info, self.flags)
        b[0x50:0x90] = _fixed(self.report_data, 64, "report_data")
        b[0x90:0xC0] = _fixed(self.measurement, 48, "measurement")
        b[0xC0:0xE0] = _fixed(self.host_data, 32, "host_data")
        b[0xE0:0x110] = _fixed(self.id_key_digest, 48, "id_key_digest")
        b[0x110:0x140] = _fixed(self.author_key_digest, 48, "author_key_digest")
        b[0x140:0x160] = _fixed(self.report_id, 32, "report_id")
        b[0x160:0x180] = _fixed(self.report_id_ma, 32, "report_id_ma")
        b[0x180:0x188] = _fixed(self.reported_tcb, 8, "reported_tcb")
        if self.version >= 3:
            b[0x188:0x18B] = bytes([self.cpuid_fam_id, self.cpuid_mod_id, self.cpuid_step])
        b[0x1A0:0x1E0] = _fixed(self.chip_id, 64, "chip_id")
        b[0x1E0:0x1E8] = _fixed(self.committed_tcb, 8, "committed_tcb")
        b[0x1E8:0x1EB] = bytes([self.current_build, self.current_minor, self.current_major])
        b[0x1EC:0x1EF] = bytes([self.committed_build, self.committed_minor, self.committed_major])
        b[0x1F0:0x1F8] = _fixed(self.launch_tcb, 8, "launch_tcb")
        if self.version >= 5:
            struct.pack_into("<QQ", b, 0x1F8, self.launch_mit_vector, self.current_mit_vector)
        b[SIG_R:SIG_S] = self.sig_r.to_bytes(72, "little")
        b[SIG_S:SIG_END] = self.sig_s.to_bytes(72, "little")
        return bytes(b)

    def with_signature(self, r: int, s: int) -> "SnpReport":
        rep = replace(self, sig_r=r, sig_s=s, raw=b"")
        return replace(rep, raw=rep.to_bytes())


def _fixed(v: bytes, n: int, name: str) -> bytes:
    v = bytes(v)
    if len(v) != n:
        raise ValueError(f"{name} must be {n} bytes, got {len(v)}")
    return v


def reserved_regions(version: int) -> list[tuple[int, int, str]]:
    """(start, end, what) of every byte range that must be zero for ``version``."""
    regions = [(0x4C, 0x50, "reserved after FLAGS")]
    regions.append((0x18B if version >= 3 else 0x188, 0x1A0, "reserved after REPORTED_TCB"))
    regions += [(0x1EB, 0x1EC, "reserved after CURRENT version"),
                (0x1EF, 0x1F0, "reserved after COMMITTED version")]
    regions.append((0x208 if version >= 5 else 0x1F8, SIGNED_END, "reserved before SIGNATURE"))
    regions.append((SIG_END, REPORT_SIZE, "unsigned reserved part of the SIGNATURE field"))
    return regions


def parse(data: bytes) -> SnpReport:
    """Parse a 1184-byte ATTESTATION_REPORT; :class:`EvidenceError` names what is wrong."""
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        what = "truncated" if len(data) < REPORT_SIZE else "oversized"
        raise EvidenceError(f"SEV-SNP report is {what}: {len(data)} bytes, expected {REPORT_SIZE}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", data, 0)
    if version not in SUPPORTED_VERSIONS:
        raise EvidenceError(f"SEV-SNP report version {version} is not supported "
                            f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    vmpl, algo = struct.unpack_from("<II", data, 0x30)
    platform_info, flags = struct.unpack_from("<QI", data, 0x40)
    v3 = version >= 3
    v5 = version >= 5
    lmit, cmit = struct.unpack_from("<QQ", data, 0x1F8) if v5 else (0, 0)
    return SnpReport(
        version=version, guest_svn=guest_svn, policy=policy,
        family_id=data[0x10:0x20], image_id=data[0x20:0x30], vmpl=vmpl, signature_algo=algo,
        current_tcb=data[0x38:0x40], platform_info=platform_info, flags=flags,
        report_data=data[0x50:0x90], measurement=data[0x90:0xC0], host_data=data[0xC0:0xE0],
        id_key_digest=data[0xE0:0x110], author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160], report_id_ma=data[0x160:0x180],
        reported_tcb=data[0x180:0x188],
        cpuid_fam_id=data[0x188] if v3 else 0, cpuid_mod_id=data[0x189] if v3 else 0,
        cpuid_step=data[0x18A] if v3 else 0,
        chip_id=data[0x1A0:0x1E0], committed_tcb=data[0x1E0:0x1E8],
        current_build=data[0x1E8], current_minor=data[0x1E9], current_major=data[0x1EA],
        committed_build=data[0x1EC], committed_minor=data[0x1ED], committed_major=data[0x1EE],
        launch_tcb=data[0x1F0:0x1F8], launch_mit_vector=lmit, current_mit_vector=cmit,
        sig_r=int.from_bytes(data[SIG_R:SIG_S], "little"),
        sig_s=int.from_bytes(data[SIG_S:SIG_END], "little"),
        raw=data,
    )


def build(**values) -> SnpReport:
    """A report from keyword fields (unknown names raise TypeError), unsigned (r = s = 0)."""
    names = {f.name for f in fields(SnpReport)}
    unknown = set(values) - names
    if unknown:
        raise TypeError(f"unknown SEV-SNP report field(s): {', '.join(sorted(unknown))}")
    if values.get("version", 5) not in SUPPORTED_VERSIONS:
        raise ValueError(f"version must be one of {SUPPORTED_VERSIONS}")
    rep = SnpReport(**values)
    return replace(rep, raw=rep.to_bytes())


# -- explanations (for %attest --explain) ----------------------------------------------------------

def _policy_text(p: int) -> str:
    bits = [f"ABI ≥ {(p >> 8) & 0xFF}.{p & 0xFF}"]
    for bit, name in ((POLICY_SMT, "SMT allowed"), (POLICY_MIGRATE_MA, "migration agent allowed"),
                      (POLICY_DEBUG, "DEBUG allowed"), (POLICY_SINGLE_SOCKET, "single socket only")):
        if p & bit:
            bits.append(name)
    return ", ".join(bits)


def explain(rep: SnpReport) -> list[tuple[str, str, str]]:
    """(field, value, one-line explanation) for each field, in report order."""
    tcb = lambda n: str(rep.tcb(n))  # noqa: E731
    rows = [
        ("version", str(rep.version), "report format version (2 Milan/Genoa early, 3 adds CPUID, 5 adds mitigation vectors)"),
        ("guest_svn", str(rep.guest_svn), "security version number of the guest, set by its author in the ID block"),
        ("policy", f"{rep.policy:#x}", f"guest policy the VM was launched with: {_policy_text(rep.policy)}"),
        ("family_id", rep.family_id.hex(), "author-chosen family identifier from the ID block"),
        ("image_id", rep.image_id.hex(), "author-chosen image identifier from the ID block"),
        ("vmpl", str(rep.vmpl), "VM privilege level that requested the report (0 = most privileged)"),
        ("signature_algo", str(rep.signature_algo), "1 = ECDSA P-384 with SHA-384"),
        ("current_tcb", tcb("current_tcb"), "firmware patch levels running now"),
        ("platform_info", f"{rep.platform_info:#x}", "platform state: bit0 SMT enabled, bit1 TSME enabled, bit2 ECC, ..."),
        ("flags", f"{rep.flags:#x}", f"signing key {rep.signing_key}; chip id masked: {rep.mask_chip_key}; author key used: {bool(rep.flags & 1)}"),
        ("report_data", rep.report_data.hex(), "64 bytes the guest asked to include: binds the report to a nonce and key"),
        ("measurement", rep.measurement.hex(), "SHA-384 launch digest of the initial guest memory (firmware, kernel, ...)"),
        ("host_data", rep.host_data.hex(), "32 bytes the host supplied at launch (unchanged for the VM's life)"),
        ("id_key_digest", rep.id_key_digest.hex(), "SHA-384 of the key that signed the ID block (zero: no ID block)"),
        ("author_key_digest", rep.author_key_digest.hex(), "SHA-384 of the author key that signed the ID key"),
        ("report_id", rep.report_id.hex(), "identifier of this guest, stable across the VM's life"),
        ("report_id_ma", rep.report_id_ma.hex(), "report id of the migration agent (all ff: none)"),
        ("reported_tcb", tcb("reported_tcb"), "TCB the VCEK is derived from; the VCEK certificate must carry the same values"),
    ]
    if rep.version >= 3:
        rows.append(("cpuid", f"family {rep.cpuid_fam_id:#x} model {rep.cpuid_mod_id:#x} stepping {rep.cpuid_step:#x}",
                     f"CPU the report came from ({rep.product or 'unknown product'})"))
    rows += [
        ("chip_id", rep.chip_id.hex(), "unique chip identifier; must equal the VCEK's hwID"),
        ("committed_tcb", tcb("committed_tcb"), "TCB the firmware committed to (no rollback below it)"),
        ("current_version", f"{rep.current_major}.{rep.current_minor}.{rep.current_build}", "SNP firmware version running now"),
        ("committed_version", f"{rep.committed_major}.{rep.committed_minor}.{rep.committed_build}", "committed SNP firmware version"),
        ("launch_tcb", tcb("launch_tcb"), "TCB when the guest was launched"),
    ]
    if rep.version >= 5:
        rows += [("launch_mit_vector", f"{rep.launch_mit_vector:#x}", "mitigations active when the guest was launched"),
                 ("current_mit_vector", f"{rep.current_mit_vector:#x}", "mitigations active now")]
    rows.append(("signature", f"r={rep.sig_r:#x}"[:40] + "…", "ECDSA P-384 signature by the VCEK/VLEK over bytes 0x000–0x29F"))
    return rows
