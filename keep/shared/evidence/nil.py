"""The ``nil`` evidence kind: the Keep's report data, unsigned.  Proves nothing."""

from __future__ import annotations

import datetime as _dt
from typing import Any, Mapping, Sequence

from .trust import (EvidenceError, ReferenceValues, SimulatedRoots, TrustVector, failed, unverified,
                    verified)

KIND = "nil"
MAGIC = b"KEEPBOOK-NIL-EVIDENCE-V1"


def make(report_data: bytes) -> bytes:
    """What a ``nil`` Keep returns: a magic string and its 64-byte report data."""
    if len(report_data) != 64:
        raise ValueError("report data must be 64 bytes")
    return MAGIC + report_data


def parse(evidence: bytes) -> bytes:
    if len(evidence) != len(MAGIC) + 64 or not evidence.startswith(MAGIC):
        raise EvidenceError(f"not nil evidence: expected {len(MAGIC) + 64} bytes starting with "
                            f"{MAGIC.decode()}")
    return evidence[len(MAGIC):]


class NilVerifier:
    kind = KIND

    def verify(self, evidence: bytes, *, certs: Sequence[bytes] = (),
               collateral: Mapping[str, Any] | None = None,
               reference: ReferenceValues | None = None,
               simulated_roots: SimulatedRoots = (),
               at: _dt.datetime | None = None) -> TrustVector:
        tv = TrustVector(kind=KIND, protection="none")
        rd = parse(evidence)
        tv.fields.append(("report_data", rd.hex(), "64 bytes the Keep says it was asked to bind"))
        tv.add(unverified("chain", "nil Keep: there is no vendor chain — NO PROTECTION"))
        tv.add(unverified("signature", "nil Keep: the evidence is not signed by anything"))
        ref = reference or ReferenceValues()
        if ref.report_data is None:
            tv.add(unverified("report_data", "no expected report data was given"))
        elif rd == ref.report_data:
            tv.add(verified("report_data", "matches the expected value (but nothing vouches for it)"))
        else:
            tv.add(failed("report_data", "does not match the expected value: the answer is not "
                          "for this request (replayed, or altered by the host)"))
        tv.add(unverified("measurement", "nil Keep: nothing measures what runs"))
        return tv
