"""``%load_ext keepbook`` in an ordinary ``python3`` (ipykernel) kernel, driven through
jupyter_client: %keep, %attest and %%keep cells that run in the Keep's Python session.
One kernel for the module; the last test shuts it down and looks for orphans."""

from __future__ import annotations

import base64
import os
import re
import threading
import time
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel

from tests.kernel.kernel_client import Kernel, ok, plain
from tests.support.procs import alive, keep_pids

pytestmark = pytest.mark.slow


class IPythonKernel(Kernel):
    """The stock ipykernel, not keepbook's: only %%keep cells go to the Keep."""

    def __init__(self, env: dict[str, str]) -> None:  # super().__init__ starts keepbook's kernel
        self.km, self.kc = start_new_kernel(kernel_name="python3", env={**os.environ, **env})
        self.pid = self.km.provisioner.process.pid
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            super().close()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ext")


@pytest.fixture(scope="module")
def kernel(tmp):
    from keepbook.keep.inside.pysession import warm

    warm()  # the interpreter's compiled artifact is made (or mapped) here, not in a test's clock
    k = IPythonKernel({"KEEPBOOK_OWNER_KEY": str(tmp / "owner.pem")})  # not the user's own key
    try:
        yield k
    finally:
        k.close()






def keepmgr_pids(parent: int) -> dict[int, Path]:
    """Embedded keep managers started by the kernel process ``parent``: pid → state directory."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "keepbook.keep.host.keepmgr" in cmd and "--parent-pid" in cmd \
                and cmd[cmd.index("--parent-pid") + 1] == str(parent):
            found[int(entry)] = Path(cmd[cmd.index("--state-dir") + 1])
    return found


def test_load_ext_then_new_keep_and_attest(kernel):
    ok(kernel.execute("%load_ext keepbook"))
    res = ok(kernel.execute("%keep new --backend sim-snp --profile staging"))
    assert "Not attested yet" in res.stream("stdout")
    res = ok(kernel.execute("%attest"))
    shown = res.of_type("display_data")[0]["data"]
    assert "RESULT: VERIFIED" in shown["text/plain"] and "SIMULATED" in shown["text/plain"]
    assert 'data-claim="report_data"' in shown["text/html"]
    res = ok(kernel.execute("%attest --json"))
    assert res.of_type("display_data")[0]["data"]["application/json"]["verified"] is True


def test_keep_cell_prints_and_returns_its_last_expression(kernel):
    res = ok(kernel.execute("%%keep\nsecret = 41\nprint('in the Keep')\nsecret + 1"))
    assert res.stream("stdout") == "in the Keep\n"
    assert plain(res) == "42"
    assert plain(ok(kernel.execute("%%keep\nsecret * 2"))) == "82"  # the session persists
    # The host kernel's own namespace never saw it: only the %%keep cells ran in the Keep.
    assert plain(ok(kernel.execute("'secret' in globals()"))) == "False"


def test_keep_cell_dataframe_is_html(kernel):
    res = ok(kernel.execute("%%keep\nimport pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})"))
    data = res.of_type("execute_result")[0]["data"]
    assert "<table" in data["text/html"] and "text/plain" in data


def test_keep_cell_streams_live(kernel):
    res = ok(kernel.execute("%%keep\nprint('first', flush=True)\nimport time\ntime.sleep(1.5)\nprint('second')"))
    assert res.stream("stdout") == "first\nsecond\n"
    assert res.first_output_at is not None and res.first_output_at < res.done_at - 1.0


def test_keep_cell_error_shows_the_guest_traceback_only(kernel):
    res = kernel.execute("%%keep\ndef f(n):\n    return 1 / n\nf(0)")
    assert res.status == "error"
    err = res.errors()[0]
    assert err["ename"] == "ZeroDivisionError" and err["evalue"] == "division by zero"
    tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(err["traceback"]))  # IPython's colours
    assert "Cell In[" in tb and "line 2, in f" in tb
    assert "keepbook" not in tb and "site-packages" not in tb and "ipython.py" not in tb
    assert plain(ok(kernel.execute("%%keep\nsecret"))) == "41"


def test_csv_uploaded_to_data_analysed_and_plotted_in_the_keep(kernel, tmp):
    """The issue's "done": a CSV under /data, pandas and matplotlib, all in the Keep, from the
    ordinary Python kernel."""
    csv = tmp / "sales.csv"
    csv.write_text("region,units\n" + "".join(f"{'north south east'.split()[i % 3]},{i}\n"
                                                for i in range(30)))
    res = ok(kernel.execute(f"%upload {csv} --as sales.csv"))
    assert "/data/sales.csv" in res.stream("stdout")
    res = ok(kernel.execute("%%keep\nimport pandas as pd, matplotlib.pyplot as plt\n"
                            "sales = pd.read_csv('/data/sales.csv')\n"
                            "totals = sales.groupby('region').units.sum()\n"
                            "totals.plot.bar(figsize=(3, 2))\nplt.show()\ntotals.to_frame()"))
    png = base64.b64decode(next(d["data"]["image/png"] for d in res.of_type("display_data")
                                if "image/png" in d["data"]))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    html = res.of_type("execute_result")[0]["data"]["text/html"]
    assert "<table" in html and "north" in html and str(sum(range(0, 30, 3))) in html


def test_usage_errors_are_short(kernel):
    res = kernel.execute("%keep explode")
    assert res.status == "error"
    assert "%keep needs one of: new, status, list, close" in res.text()
    assert "Traceback" not in res.text()


def test_interrupt_stops_a_keep_cell(kernel):
    def interrupt_soon() -> None:
        time.sleep(1.0)
        kernel.km.interrupt_kernel()
    t = threading.Thread(target=interrupt_soon)
    t.start()
    started = time.monotonic()
    res = kernel.execute("%%keep\nwhile True: pass", timeout=30)
    t.join()
    assert res.status == "error" and time.monotonic() - started < 3.0
    assert "KeyboardInterrupt" in [e["ename"] for e in res.errors()], res.errors()
    assert "lost" in res.stream("stderr")
    res = ok(kernel.execute("%%keep\nprint('alive')"))
    assert "alive" in res.stream("stdout") and "fresh Python session" in res.stream("stderr")


def test_review_from_an_ordinary_kernel_updates_the_pending_release(kernel, tmp):
    """%load_ext keepbook: the owner's %review (widget and commands) and the analyst's pending
    release, updated in place (update_display_data) once the owner approved."""
    data = tmp / "ages.csv"
    data.write_text("age\n" + "".join(f"{20 + i % 40}\n" for i in range(50)))
    (tmp / "review.toml").write_text('[release]\nmode = "review"\n')
    (tmp / "ages.seal.toml").write_text('data = "ages.csv"\npolicy = "review.toml"\n')
    ok(kernel.execute(f"%upload {tmp / 'ages.seal.toml'} --as ages.csv"))
    res = ok(kernel.execute("%%keep\nimport keep, pandas as pd\n"
                            "keep.release(int(pd.read_csv('/data/ages.csv').age.sum()), note='total')"))
    pending = [d for d in res.of_type("display_data") if "waiting for the data owner" in
               d["data"].get("text/plain", "")]
    assert len(pending) == 1
    display_id = pending[0]["transient"]["display_id"]
    listed = ok(kernel.execute("%review --allow-simulated --profile staging"))
    assert "#1  PENDING" in listed.text()
    approved = ok(kernel.execute("%review approve 1 --allow-simulated --profile staging"))
    assert "#1 approved" in approved.stream("stdout")
    updates = [m for m in approved.of_type("update_display_data")
               if m["transient"]["display_id"] == display_id]
    assert updates and updates[0]["data"]["text/plain"] == str(sum(20 + i % 40 for i in range(50)))


def test_status_list_and_close(kernel):
    status = ok(kernel.execute("%keep status")).text()
    kid = re.search(r"^id\s+(\w+)", status, re.M).group(1)
    assert "provisioned" in status or "running" in status
    assert kid in ok(kernel.execute("%keep list")).stream()
    assert f"Keep {kid} closed" in ok(kernel.execute("%keep close")).stream()
    res = kernel.execute("%keep status")
    assert res.status == "error" and "%keep new" in res.errors()[0]["evalue"]
    assert "Traceback" not in "\n".join(res.errors()[0]["traceback"])


def test_no_keepbook_process_outlives_the_kernel(kernel):
    ok(kernel.execute("%keep new --backend nil"))
    ok(kernel.execute("%%keep\nprint('last words')"))
    kid = re.search(r"^id\s+(\w+)", kernel.execute("%keep status").text(), re.M).group(1)
    keepldr, wasmldr = keep_pids(kid)
    managers = keepmgr_pids(kernel.pid)
    assert keepldr and wasmldr and len(managers) == 1
    kernel.close()
    pids = [keepldr, wasmldr, *managers]
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "keepbook processes outlived the IPython kernel"
    # Stopped by the extension at exit (which removes the manager's private state directory),
    # not merely by the manager noticing its parent died.
    assert not [d for d in managers.values() if d.exists()]
