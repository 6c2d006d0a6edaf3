"""``/dev/sev-guest`` SNP_GET_EXT_REPORT: SEV-SNP report + host certificate table (kernels
before configfs-tsm).  Structures from ``include/uapi/linux/sev-guest.h``:

* ``snp_report_req``      user_data[64], vmpl u32, rsvd[28]                      (96 bytes)
* ``snp_ext_report_req``  snp_report_req, certs_address u64, certs_len u32       (112 with padding)
* ``snp_report_resp``     data[4000]: MSG_REPORT_RSP = status u32, report_size u32, rsvd[24], report
* ``snp_guest_request_ioctl`` msg_version u8, pad[7], req_data u64, resp_data u64, exitinfo2 u64
  (fw_error u32 ‖ vmm_error u32)                                                (32 bytes)

When the certificate buffer is too small the ioctl fails with vmm_error = 1 (INVALID_LEN) and
``certs_len`` holds the needed size; we retry once with that size.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from pathlib import Path
from typing import Callable

from .common import ProviderError, check_report_data, parse_cert_table


def _iowr(type_: str, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord(type_) << 8) | nr


GUEST_REQ_SIZE = 32
SNP_GET_REPORT = _iowr("S", 0x0, GUEST_REQ_SIZE)
SNP_GET_EXT_REPORT = _iowr("S", 0x2, GUEST_REQ_SIZE)
REPORT_REQ = struct.Struct("<64sI28x")          # 96
EXT_REPORT_REQ = struct.Struct("<96sQI4x")       # 112 (u64 alignment pads the tail)
GUEST_REQ = struct.Struct("<B7xQQII")           # 32
RESP_SIZE = 4000
MSG_REPORT_RSP = struct.Struct("<II24x")         # status, report_size, reserved → report at 32
VMM_ERR_INVALID_LEN = 1
PAGE = 4096


class SevGuestProvider:
    DEVICE = Path("dev/sev-guest")

    def __init__(self, *, root: Path = Path("/"), vmpl: int = 0, certs_len: int = 4 * PAGE,
                 ioctl: Callable = fcntl.ioctl):
        self.device = Path(root) / self.DEVICE
        self.vmpl = vmpl
        self.certs_len = certs_len
        self.ioctl = ioctl

    @classmethod
    def available(cls, root: Path) -> bool:
        return (Path(root) / cls.DEVICE).exists()

    def get_evidence(self, report_data: bytes) -> tuple[str, bytes, list[bytes]]:
        rd = check_report_data(report_data)
        try:
            fd = os.open(self.device, os.O_RDWR)
        except OSError as e:
            raise ProviderError(f"cannot open {self.device}: {e.strerror}") from None
        try:
            try:
                report, certs = self._request(fd, rd, self.certs_len)
            except _TooSmall as e:
                report, certs = self._request(fd, rd, e.needed)
        finally:
            os.close(fd)
        return "sev-snp", report, parse_cert_table(certs)

    def _request(self, fd: int, rd: bytes, certs_len: int) -> tuple[bytes, bytes]:
        certs_len = -(-certs_len // PAGE) * PAGE
        certs_buf = ctypes.create_string_buffer(certs_len)
        resp = ctypes.create_string_buffer(RESP_SIZE)
        req = ctypes.create_string_buffer(
            EXT_REPORT_REQ.pack(REPORT_REQ.pack(rd, self.vmpl), ctypes.addressof(certs_buf), certs_len),
            EXT_REPORT_REQ.size)
        arg = bytearray(GUEST_REQ.pack(1, ctypes.addressof(req), ctypes.addressof(resp), 0, 0))
        try:
            self.ioctl(fd, SNP_GET_EXT_REPORT, arg, True)
        except OSError as e:
            _, _, _, fw_err, vmm_err = GUEST_REQ.unpack(bytes(arg))
            if vmm_err == VMM_ERR_INVALID_LEN:
                needed = EXT_REPORT_REQ.unpack(req.raw)[2]
                raise _TooSmall(needed) from None
            raise ProviderError(f"SNP_GET_EXT_REPORT failed: {errno.errorcode.get(e.errno, e.errno)} "
                                f"(firmware error {fw_err:#x}, VMM error {vmm_err:#x})") from None
        status, size = MSG_REPORT_RSP.unpack_from(resp.raw, 0)
        if status != 0:
            raise ProviderError(f"the SNP firmware refused the report request (status {status:#x})")
        if not 0 < size <= RESP_SIZE - 32:
            raise ProviderError(f"the SNP firmware returned a report of {size} bytes")
        return resp.raw[32:32 + size], certs_buf.raw


class _TooSmall(Exception):
    def __init__(self, needed: int):
        self.needed = needed
