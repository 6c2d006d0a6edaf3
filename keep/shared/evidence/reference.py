"""Reference values from TOML — one parser, shared by `keepbook verify --policy FILE` and the
kernel's trust policy (its ``[reference]`` table): what a real Keep's evidence must show."""

from __future__ import annotations

from typing import Any, Mapping

from .trust import ReferenceValues

HEX_FIELDS = {"report_data": 64, "measurement": None, "host_data": 32, "mrsigner": 32,
              "personalization": 64, "mrconfigid": 48}
BOOL_FIELDS = ("allow_debug", "allow_smt", "allow_migration_agent", "allow_sept_ve",
               "allow_reserved_td_attributes", "allow_service_td")
KEYS = set(HEX_FIELDS) | set(BOOL_FIELDS) | {"rtmrs", "rems", "min_tcb", "vmpl", "accept_tcb_status"}


def _hex(value: Any, name: str, size: int | None, pad: bool = False) -> bytes:
    try:
        b = bytes.fromhex(str(value).strip().removeprefix("0x"))
    except ValueError:
        raise ValueError(f"{name} is not hex: {value!r}") from None
    if size is not None:
        if len(b) > size or (len(b) < size and not pad):
            raise ValueError(f"{name} must be {size} bytes, got {len(b)}")
        b = b.ljust(size, b"\0")
    return b


def parse_reference(doc: Mapping[str, Any], base: ReferenceValues | None = None) -> ReferenceValues:
    """Keys of ``doc`` that are reference values → a ReferenceValues (others are ignored: the
    caller checks for unknown keys).  Raises ValueError naming the bad key."""
    ref = base or ReferenceValues()
    for k, size in HEX_FIELDS.items():
        if k in doc:
            setattr(ref, k, _hex(doc[k], k, size, pad=(k == "report_data")))
    if "rtmrs" in doc:
        rt = doc["rtmrs"]
        if not isinstance(rt, list) or len(rt) > 4:
            raise ValueError("rtmrs must be a list of up to 4 hex strings ('' = don't check)")
        ref.rtmrs = [(_hex(x, f"rtmrs[{i}]", 48) if x else None) for i, x in enumerate(rt)]
    if "rems" in doc:
        rem = doc["rems"]
        if not isinstance(rem, list) or len(rem) > 4:
            raise ValueError("rems must be a list of up to 4 hex strings ('' = don't check)")
        ref.rems = [(_hex(x, f"rems[{i}]", None) if x else None) for i, x in enumerate(rem)]
    for k in BOOL_FIELDS:
        if k in doc:
            if not isinstance(doc[k], bool):
                raise ValueError(f"{k} must be true or false")
            setattr(ref, k, doc[k])
    if "vmpl" in doc:
        if isinstance(doc["vmpl"], bool) or not isinstance(doc["vmpl"], int) or not 0 <= doc["vmpl"] <= 3:
            raise ValueError("vmpl must be 0–3")
        ref.vmpl = doc["vmpl"]
    if "min_tcb" in doc:
        mt = doc["min_tcb"]
        if not isinstance(mt, dict) or not all(isinstance(v, int) for v in mt.values()):
            raise ValueError("min_tcb must be a table of integers (bootloader, tee, snp, microcode, fmc)")
        ref.min_tcb = dict(mt)
    if "accept_tcb_status" in doc:
        if not isinstance(doc["accept_tcb_status"], list):
            raise ValueError("accept_tcb_status must be a list of TCB status names")
        ref.accept_tcb_status = tuple(str(x) for x in doc["accept_tcb_status"])
    return ref
