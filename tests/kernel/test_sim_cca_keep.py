"""A simulated Arm CCA Keep end to end in the kernel: created, attested (SIMULATED, the CCA
claims and fields shown by --explain), and running a cell."""

from __future__ import annotations

import pytest

from tests.kernel.kernel_client import Kernel
from tests.support.cells import print_wat


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    yield k
    k.close()


def test_sim_cca_keep_end_to_end(kernel):
    res = kernel.execute("%keep new --backend sim-cca")
    assert res.status == "ok", res.text()
    res = kernel.execute("%attest --explain")
    assert res.status == "ok", res.text()
    text = res.of_type("display_data")[0]["data"]["text/plain"]
    assert "RESULT: VERIFIED" in text and "SIMULATED" in text
    for claim in ("rak_binding", "realm_signature", "lifecycle", "measurement", "report_data"):
        assert claim in text, claim
    for field in ("platform.lifecycle", "platform.sw[0]", "realm.rim", "realm.challenge", "realm.rak"):
        assert field in text, field
    res = kernel.execute("%%wat\n" + print_wat("hello from a simulated realm\n"))
    assert res.status == "ok" and "hello from a simulated realm" in res.stream("stdout"), res.text()
    status = kernel.execute("%keep status")
    assert "sim-cca" in status.text() and "SIMULATED" in status.text()
