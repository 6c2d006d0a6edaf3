"""The keep manager's collateral cache (``keepbook keepmgr --collateral-dir DIR``): vendor
collateral the host operator keeps for its platforms, attached to each attestation answer of a
hardware Keep so that the client can judge the TCB.

Runs on the untrusted host and decides nothing: the collateral is signed by Intel (TCB info, QE
identity, CRLs) or AMD (CRLs), and the client verifies every signature, date and FMSPC.  A host
that carries altered or stale collateral only makes the client refuse the Keep, naming the claim.

The operator puts files in DIR (subfolders too), fetched from Intel's PCS (or a PCCS):

* dcap-qvl ``QuoteCollateralV3`` JSON — everything for one FMSPC in one file;
* or the raw PCS bodies: TCB info (``{"tcbInfo": …, "signature": …}``), QE identity
  (``{"enclaveIdentity": …}``), issuer chains as PEM (the URL-decoded ``*-Issuer-Chain``
  headers), CRLs as DER, PEM or hex — and AMD's CRLs for SEV-SNP.

TCB info is keyed by (TCB info id, FMSPC) and found from the PCK certificate inside each quote;
QE identity by its id (``QE`` for SGX, ``TD_QE`` for TDX); of several for the same key the newest
(``issueDate``) is sent.  Issuer chains and CRLs go with every answer of their vendor (the client
ignores a CRL whose issuer is not in its chain).  SEV-SNP certificates need nothing here: the
extended report's certificate table (VCEK or VLEK, ASK/ASVK, ARK) already comes in ``certs``.

The folder is read again whenever a file in it changes (size or modification time), so the
operator refreshes collateral (it expires after about 30 days) without restarting the manager.
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.x509.oid import NameOID

from keepbook.keep.shared import facts, protocol
from keepbook.keep.shared.evidence import dcap, pcs
from keepbook.keep.shared.evidence.certs import load_certs, load_der
from keepbook.keep.shared.evidence.pck import has_sgx_ext, parse_pck
from keepbook.keep.shared.evidence.trust import EvidenceError

#: a folder with more files than this is not read past it (the operator is told)
MAX_FILES = 256
#: TCB info id and QE identity id per DCAP evidence kind
DCAP_IDS = {"tdx": ("TDX", "TD_QE"), "sgx": ("SGX", "QE")}
#: the vendors whose collateral goes with each evidence kind
VENDOR_OF_KIND = {"tdx": "intel", "sgx": "intel", "sev-snp": "amd"}
_VENDORS = {"Intel Corporation": "intel", "Advanced Micro Devices": "amd"}

Log = Callable[..., None]


@dataclass(frozen=True)
class Part:
    """One usable file of the cache."""

    path: Path
    data: bytes
    role: str                  # "bundle" (dcap-qvl JSON), "tcb_info", "qe_identity", "chain", "crl"
    vendor: str                # "intel" or "amd"
    key: str = ""              # bundle/tcb_info: "<id>:<fmspc>"; qe_identity: its id
    issued: _dt.datetime = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)


def classify(path: Path, data: bytes) -> Part:
    """What one file is; :class:`EvidenceError` naming why it is not usable collateral."""
    col = pcs.load_part(data)
    if col.tcb_info is not None:
        body = col.tcb_info.body
        key = f"{body.get('id', 'SGX')}:{str(body.get('fmspc', '')).lower()}"
        role = "bundle" if col.qe_identity is not None else "tcb_info"
        return Part(path, data, role, "intel", key, col.tcb_info.issue_date)
    if col.qe_identity is not None:
        body = col.qe_identity.body
        return Part(path, data, "qe_identity", "intel", str(body.get("id", "")),
                    col.qe_identity.issue_date)
    if col.crls:
        return Part(path, data, "crl", _vendor(x509.load_der_x509_crl(col.crls[0]).issuer))
    if col.certs:
        return Part(path, data, "chain", _vendor(load_der(col.certs[0]).subject))
    raise EvidenceError("holds no collateral")


def _vendor(name: x509.Name) -> str:
    orgs = [a.value for a in name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    vendor = next((_VENDORS[o] for o in orgs if o in _VENDORS), None)
    if vendor is None:
        raise EvidenceError(f"issued by {', '.join(map(str, orgs)) or 'an unnamed organisation'}, "
                            "neither Intel nor AMD")
    return vendor


def _read_bounded(path: Path, size: int) -> bytes:
    """A file's bytes, never more than one collateral part may hold (a huge file is not read)."""
    limit = protocol.MAX_COLLATERAL_PART
    if size <= limit:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
        size = len(data)
        if size <= limit:
            return data
    raise EvidenceError(f"{size} bytes: larger than one collateral part may be ({limit})")


def dcap_fmspc(evidence: bytes) -> str | None:
    """The FMSPC (lower-case hex) of the PCK certificate inside a DCAP quote; None when the quote
    carries no PCK chain or does not parse (the client will say what is wrong with it)."""
    try:
        q = dcap.parse(evidence)
        if q.qe.cert_type != dcap.CERT_PCK_CHAIN:
            return None
        pck = next((c for c in map(load_der, load_certs(q.qe.cert_data)) if has_sgx_ext(c)), None)
        return parse_pck(pck).fmspc.hex() if pck is not None else None
    except Exception:  # noqa: BLE001 — the Keep's bytes are untrusted; a bad quote just gets nothing
        return None


class CollateralCache:
    """The folder's usable files, indexed; :meth:`attach` adds the matching ones to an answer."""

    def __init__(self, directory: Path, log: Log | None = None):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ValueError(f"--collateral-dir {self.directory} is not a folder")
        self._log = log or (lambda event, **detail: None)
        self._lock = threading.Lock()
        self._stamp: tuple = ()
        self._parts: list[Part] = []
        self.problems: dict[str, str] = {}       # file → why it is not used
        self.refresh()

    # -- reading the folder ----------------------------------------------------------------------
    def _stamp_of_folder(self) -> tuple[tuple[str, int, int], ...]:
        """(file, size, mtime) of the folder's files, in order; files that vanish are skipped."""
        out = []
        try:
            found = sorted(p for p in self.directory.rglob("*") if not p.name.startswith("."))
        except OSError:
            found = []
        for p in found:
            try:
                st = p.stat()
            except OSError:
                continue
            if p.is_file():
                out.append((str(p), st.st_size, st.st_mtime_ns))
        return tuple(out)

    def refresh(self) -> None:
        """Read the folder again if any file in it changed since the last time."""
        with self._lock:
            stamp = self._stamp_of_folder()
            if stamp == self._stamp:
                return
            parts: list[Part] = []
            problems: dict[str, str] = {}
            if len(stamp) > MAX_FILES:
                problems["(folder)"] = f"{len(stamp)} files: only the first {MAX_FILES} are read"
            for name, size, _ in stamp[:MAX_FILES]:
                p = Path(name)
                rel = str(p.relative_to(self.directory))
                try:
                    parts.append(classify(p, _read_bounded(p, size)))
                except Exception as exc:  # noqa: BLE001 — an operator's file never stops the manager
                    problems[rel] = (str(exc) or type(exc).__name__)[:200]
            for rel, why in problems.items():
                self._log("collateral-file-unusable", file=rel, reason=why)
            self._parts, self.problems, self._stamp = parts, problems, stamp
            self._log("collateral-loaded", dir=str(self.directory), files=len(parts),
                      unusable=len(problems))

    # -- choosing ----------------------------------------------------------------------------------
    def _newest(self, role: str, key: str) -> Part | None:
        found = [p for p in self._parts if p.role == role and p.key == key]
        return max(found, key=lambda p: (p.issued, str(p.path))) if found else None

    def parts_for(self, kind: str, evidence: bytes) -> tuple[list[Part], str]:
        """The parts for this evidence (most important first), and a note for the host's log."""
        self.refresh()
        with self._lock:
            vendor = VENDOR_OF_KIND.get(kind)
            shared = [p for p in self._parts if p.vendor == vendor and p.role in ("chain", "crl")]
            if kind not in DCAP_IDS:
                return ([p for p in shared if p.role == "crl"] if vendor else []), ""
            tcb_id, qe_id = DCAP_IDS[kind]
            fmspc = dcap_fmspc(evidence)
            if fmspc is None:
                return [], "the quote carries no PCK certificate to find its FMSPC"
            bundle = self._newest("bundle", f"{tcb_id}:{fmspc}")
            if bundle is not None:
                return [bundle], ""
            tcb = self._newest("tcb_info", f"{tcb_id}:{fmspc}")
            qe = self._newest("qe_identity", qe_id)
            chosen = [p for p in (tcb, qe) if p is not None] + shared
            note = "" if tcb is not None else f"no {tcb_id} TCB info for FMSPC {fmspc.upper()} in the cache"
            return chosen, note

    def attach(self, resp: protocol.AttestResponse, backend: str, keep: str = "") -> protocol.AttestResponse:
        """``resp`` with the cache's collateral for it added (hardware Keeps only: a simulated
        Keep's quote chains to this installation's simulated root, not to Intel)."""
        spec = facts.BACKENDS.get(backend)
        if spec is None or not spec.hardware:
            return resp
        parts, note = self.parts_for(resp.evidence_kind, resp.evidence)
        have = list(resp.collateral or [])
        total = sum(len(p) for p in have)
        added, dropped = [], []
        for part in parts:
            if (len(have) + len(added) < protocol.MAX_COLLATERAL_PARTS
                    and total + len(part.data) <= protocol.MAX_COLLATERAL_BYTES):
                added.append(part.data)
                total += len(part.data)
            else:
                dropped.append(part.path.name)
        if dropped:
            note = (note + "; " if note else "") + f"over the answer's limit, not sent: {', '.join(dropped)}"
        self._log("collateral-attached", keep=keep, kind=resp.evidence_kind, parts=len(added),
                  **({"note": note} if note else {}))
        if not added:
            return resp
        fields = {f: getattr(resp, f) for f in resp.SPEC}
        return protocol.AttestResponse(**{**fields, "collateral": have + added})


def open_cache(directory: str | os.PathLike | None, log: Log) -> CollateralCache | None:
    """The cache for ``--collateral-dir`` (None when not given); ValueError if unusable."""
    return CollateralCache(Path(directory).expanduser(), log) if directory else None
