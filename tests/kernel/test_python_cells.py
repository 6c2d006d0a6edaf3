"""Python cells (no magic) through jupyter_client against the keepbook kernel: they run in the
Keep's persistent CPython-in-Wasm session.  One kernel and one Keep for the whole module."""

from __future__ import annotations

import base64
import re
import struct
import threading
import time

import pytest

from tests.kernel.kernel_client import Kernel, ok, plain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kernel():
    from keepbook.keep.inside.pysession import warm

    warm()  # the interpreter's compiled artifact is made (or mapped) here, not in a test's clock
    k = Kernel()
    try:
        assert k.execute("%keep new").status == "ok"
        yield k
    finally:
        k.close()






def interrupt_after(kernel: Kernel, delay: float) -> threading.Thread:
    def go() -> None:
        time.sleep(delay)
        kernel.km.interrupt_kernel()
    t = threading.Thread(target=go)
    t.start()
    return t


def test_first_cell_attests_then_state_persists_across_cells(kernel):
    res = ok(kernel.execute("x = 41\ndef twice(v):\n    return 2 * v\nprint('defined')"))
    assert "attested: sev-snp evidence VERIFIED" in res.text()  # the progress line, updated in place
    assert res.stream("stdout") == "defined\n"
    res = ok(kernel.execute("import math\ntwice(x + 1) + math.floor(0.5)"))
    assert plain(res) == "84"
    assert res.of_type("execute_result")[0]["execution_count"] == res.reply["content"]["execution_count"]


def test_dataframe_is_html_and_text(kernel):
    res = ok(kernel.execute("import pandas as pd\ndf = pd.DataFrame({'city': ['Oslo', 'Lima'], "
                            "'t': [3.5, 19.0]})\ndf"))
    data = res.of_type("execute_result")[0]["data"]
    assert "<table" in data["text/html"] and "Oslo" in data["text/html"]
    assert "Lima" in data["text/plain"] and "19.0" in data["text/plain"]


def test_display_call_sends_display_data(kernel):
    res = ok(kernel.execute("display(df.describe())\n'after'"))
    shown = res.of_type("display_data")
    assert len(shown) == 1 and "<table" in shown[0]["data"]["text/html"]
    assert plain(res) == "'after'"


def _png_size(b64: str) -> tuple[int, int]:
    png = base64.b64decode(b64)
    assert png[:8] == b"\x89PNG\r\n\x1a\n", png[:8]
    assert png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


@pytest.mark.parametrize("show", ["plt.show()", "# implicit display at cell end"])
def test_matplotlib_figure_is_a_png(kernel, show):
    res = ok(kernel.execute("import matplotlib.pyplot as plt\n"
                            "fig = plt.figure(figsize=(4, 3), dpi=50)\n"
                            f"plt.plot(df['t'])\n{show}"))
    pngs = [d["data"]["image/png"] for d in res.of_type("display_data") if "image/png" in d["data"]]
    assert len(pngs) == 1, res.outputs
    w, h = _png_size(pngs[0])
    assert 100 <= w <= 400 and 75 <= h <= 300, (w, h)  # 4x3 inches at 50 dpi, give or take a tight box


def test_print_streams_before_the_cell_ends(kernel):
    res = ok(kernel.execute("print('first', flush=True)\nimport time\ntime.sleep(1.5)\nprint('second')"))
    assert res.stream("stdout") == "first\nsecond\n"
    chunks = [o for o in res.outputs if o["msg_type"] == "stream" and o["content"]["name"] == "stdout"]
    assert chunks[0]["content"]["text"].startswith("first")
    assert res.first_output_at is not None and res.done_at is not None
    assert res.first_output_at < res.done_at - 1.0, (res.first_output_at, res.done_at)


def test_exception_has_the_guest_traceback(kernel):
    res = kernel.execute("def f(n):\n    return 1 / n\nf(0)")
    assert res.status == "error"
    err = res.errors()[0]
    assert err["ename"] == "ZeroDivisionError" and err["evalue"] == "division by zero"
    tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(err["traceback"]))  # IPython's colours
    assert "Cell In[" in tb and "line 3" in tb and "line 2, in f" in tb
    assert "keepbook" not in tb and "site-packages" not in tb  # nothing of the host in it
    assert plain(ok(kernel.execute("x"))) == "41"  # an exception keeps the session


def test_execute_reply_names_the_guest_error(kernel):
    res = kernel.execute("1 / 0")
    assert res.reply["content"]["ename"] == "ZeroDivisionError"
    assert res.reply["content"]["evalue"] == "division by zero"


def test_input_is_a_clear_error(kernel):
    res = kernel.execute("name = input('your name? ')")
    assert res.status == "error"
    assert "input() is not available in the Keep" in res.errors()[0]["evalue"]


def test_data_is_a_read_only_folder(kernel):
    res = ok(kernel.execute("import os\n(os.path.isdir('/data'), sorted(os.listdir('/data')) is not None)"))
    assert plain(res) == "(True, True)"
    res = kernel.execute("open('/data/new.txt', 'w')")
    assert res.status == "error"
    assert res.errors()[0]["ename"] in ("PermissionError", "OSError")


def test_completion_and_inspection_are_answered_by_the_guest(kernel):
    ok(kernel.execute("keep_only_variable = [1, 2, 3]"))
    kernel.kc.complete("keep_only_v", 11)
    reply = kernel.kc.get_shell_msg(timeout=10)["content"]
    assert reply["status"] == "ok" and "keep_only_variable" in reply["matches"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (0, 11)
    kernel.kc.complete("df.ci", 5)  # attribute completion needs the guest's objects
    reply = kernel.kc.get_shell_msg(timeout=10)["content"]
    assert any(m.endswith("city") for m in reply["matches"]), reply
    kernel.kc.inspect("keep_only_variable", 5)
    reply = kernel.kc.get_shell_msg(timeout=10)["content"]
    assert reply["found"] and "list" in reply["data"]["text/plain"]


def test_cooperative_interrupt_keeps_the_variables(kernel):
    ok(kernel.execute("kept = 'still here'"))
    t = interrupt_after(kernel, 1.0)
    started = time.monotonic()
    res = kernel.execute("import time\nwhile True:\n    time.sleep(0.05)", timeout=30)
    t.join()
    assert res.status == "error" and time.monotonic() - started < 2.5
    assert res.errors()[0]["ename"] == "KeyboardInterrupt"
    assert "lost" not in res.text()
    assert plain(ok(kernel.execute("kept"))) == "'still here'"


def test_interrupt_of_a_tight_loop_stops_within_a_second_and_says_variables_are_lost(kernel):
    ok(kernel.execute("kept = 'gone soon'"))
    t = interrupt_after(kernel, 1.0)
    started = time.monotonic()
    res = kernel.execute("while True: pass", timeout=30)
    stopped_after = time.monotonic() - started - 1.0
    t.join()
    assert res.status == "error"
    assert stopped_after < 1.2, stopped_after  # ≤ 1 s (≈0.45 s measured), a little slack for load
    assert "KeyboardInterrupt" in [e["ename"] for e in res.errors()]
    assert "variables and imports are lost" in res.stream("stderr")
    res = kernel.execute("print('works'); kept")
    assert res.status == "error" and "works" in res.stream("stdout")
    assert "fresh Python session" in res.stream("stderr")
    assert res.errors()[0]["ename"] == "NameError"  # and it says so: the variable is gone


def test_exit_ends_the_session_and_the_next_cell_announces_a_fresh_one(kernel):
    ok(kernel.execute("y = 1"))
    res = ok(kernel.execute("exit()"))
    assert "session in the Keep has ended" in res.stream("stderr")
    res = kernel.execute("y")
    assert "Started a fresh Python session" in res.stream("stderr")
    assert res.status == "error" and res.errors()[0]["ename"] == "NameError"
    assert plain(ok(kernel.execute("1 + 1"))) == "2"


def test_limits_memory_output_cap_and_deadline(kernel):
    """A Keep with small limits: each limit is a clear message and the session survives it."""
    ok(kernel.execute("%keep new --backend nil --memory 200MiB --timeout 2 --output-cap 2KiB"))
    ok(kernel.execute("kept = 5"))
    res = kernel.execute("big = bytearray(400 * 1024 * 1024)")
    assert res.status == "error" and res.errors()[0]["ename"] == "MemoryError"
    assert "memory limit of 200 MiB" in res.errors()[0]["evalue"]
    res = ok(kernel.execute("for i in range(1000):\n    print('line', i)"))
    assert len(res.stream("stdout").encode()) <= 2048
    assert "output truncated" in res.stream("stderr")
    started = time.monotonic()
    res = kernel.execute("import time\nwhile True:\n    time.sleep(0.1)", timeout=30)
    assert res.status == "error" and res.errors()[0]["ename"] == "TimeoutError"
    assert time.monotonic() - started < 4
    assert plain(ok(kernel.execute("kept"))) == "5"


def test_os_exit_ends_the_session_too(kernel):
    ok(kernel.execute("kept = 5"))
    res = ok(kernel.execute("import os\nos._exit(3)"))
    assert "has ended" in res.stream("stderr")
    res = kernel.execute("kept")
    assert "fresh Python session" in res.stream("stderr") and res.errors()[0]["ename"] == "NameError"
