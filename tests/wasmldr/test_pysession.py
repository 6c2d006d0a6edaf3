"""PythonSession: CPython-in-Wasm in the Keep.  One shared session for most tests (each fresh
interpreter costs little, but pandas/matplotlib imports cost ≈1.5 s each)."""

from __future__ import annotations

import base64
import re
import struct
import threading
import time

import pytest

from keepbook.keep.inside.pysession import PythonSession

pytestmark = pytest.mark.slow


class Recorder:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.events: list[tuple[float, str, dict]] = []

    def __call__(self, kind: str, content: dict) -> None:
        self.events.append((time.monotonic(), kind, content))

    def of(self, kind: str) -> list[dict]:
        return [c for _, k, c in self.events if k == kind]

    def stdout(self) -> str:
        return "".join(c["text"] for c in self.of("stream") if c["name"] == "stdout")


def run(session: PythonSession, code: str, **kw):
    rec = Recorder()
    kw.setdefault("timeout_s", 60)
    status = session.run(code, emit=rec, **kw)
    return status, rec


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    (data / "points.csv").write_text("x,y\n1,2\n3,4\n")
    s = PythonSession(memory_bytes=512 * 1024 * 1024, data_dir=str(data))
    yield s
    s.close()


def test_state_persists_and_last_expression(session):
    status, rec = run(session, "x = 20\ndef double(v):\n    return 2 * v\nprint('set')")
    assert status["ok"] and rec.stdout() == "set\n"
    status, rec = run(session, "double(x) + 2")
    assert rec.of("execute_result") == [{"data": {"text/plain": "42"}, "metadata": {}}]


def test_dataframe_html_from_data_folder(session):
    status, rec = run(session, "import pandas as pd\ndf = pd.read_csv('/data/points.csv')\ndf")
    assert status["ok"], rec.events
    (result,) = rec.of("execute_result")
    assert "<table" in result["data"]["text/html"]
    assert "x" in result["data"]["text/plain"] and "3" in result["data"]["text/plain"]


def test_data_folder_is_read_only(session):
    status, rec = run(session, "open('/data/new.txt', 'w')")
    assert status["reason"] == "error"
    assert rec.of("error")[0]["ename"] == "PermissionError"


def test_matplotlib_png(session):
    code = ("import matplotlib.pyplot as plt\n"
            "plt.plot([1, 2, 3], [1, 4, 9])\n"
            "plt.show()\n"
            "print('after show')\n"
            "plt.figure(); plt.bar([1, 2], [3, 4])")
    status, rec = run(session, code)
    assert status["ok"], rec.events
    pngs = [base64.b64decode(d["data"]["image/png"]) for d in rec.of("display_data")]
    assert len(pngs) == 2  # plt.show() and the implicit display at cell end
    for png in pngs:
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        assert width > 100 and height > 100
    kinds = [k for _, k, _ in rec.events]
    assert kinds.index("display_data") < kinds.index("stream")  # show() displayed at once


def test_display_and_keep_module(session):
    status, rec = run(session, "display({'a': 1})\nimport keep\nkeep.display('b')")
    assert [d["data"]["text/plain"] for d in rec.of("display_data")] == ["{'a': 1}", "'b'"]


def test_print_streams_live(session):
    code = "import time\nfor i in range(3):\n    print('tick', i)\n    time.sleep(0.3)"
    before = time.monotonic()
    status, rec = run(session, code)
    ended = time.monotonic()
    assert status["ok"]
    assert rec.stdout() == "tick 0\ntick 1\ntick 2\n"
    first = rec.events[0]
    assert first[1] == "stream" and first[0] < ended - 0.4
    assert first[0] - before < 0.3


def test_error_has_guest_traceback(session):
    status, rec = run(session, "def f():\n    return 1 / 0\nf()")
    assert status == {**status, "ok": False, "reason": "error"}
    (err,) = rec.of("error")
    assert err["ename"] == "ZeroDivisionError"
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(err["traceback"]))  # IPython's colours
    assert "Cell In[" in text and "return 1 / 0" in text and "_keep_guest" not in text


def test_input_raises_clear_error(session):
    status, rec = run(session, "input('name? ')")
    assert "input() is not available in the Keep" in rec.of("error")[0]["evalue"]


def test_output_cap(session):
    status, rec = run(session, "for i in range(10000): print('line', i)", output_bytes=2000)
    assert status["truncated"]
    assert 0 < len(rec.stdout().encode()) <= 2000
    assert len(rec.of("notice")) == 1 and "truncated" in rec.of("notice")[0]["text"]


def test_memory_limit_is_a_memory_error(session):
    status, rec = run(session, "b = bytearray(600 * 1024 * 1024)")
    (err,) = rec.of("error")
    assert err["ename"] == "MemoryError" and "512 MiB" in err["evalue"]
    assert run(session, "x")[1].of("execute_result")  # the session survived


def test_complete_and_inspect(session):
    run(session, "import os\nmy_variable = 3")
    reply = session.complete("my_va", 5)
    assert reply["matches"] == ["my_variable"] and reply["cursor_start"] == 0
    reply = session.complete("os.pa", 5)  # as IPython answers it: replace ".pa" by ".path"
    assert "os.path" in ["os.pa"[:reply["cursor_start"]] + m for m in reply["matches"]]
    reply = session.complete("%tim", 4)  # the shell's magics
    assert {"%time", "%timeit"} <= set(reply["matches"])
    reply = session.inspect("len(", 4)
    assert reply["found"] and "Return the number of items" in reply["data"]["text/plain"]


def test_cooperative_interrupt_keeps_state(session):
    run(session, "kept = 'yes'")
    rec = Recorder()
    threading.Timer(0.5, session.interrupt).start()
    code = "import time\nwhile True:\n    print('.', end='')\n    time.sleep(0.05)"
    status = session.run(code, emit=rec, timeout_s=30)
    assert status["reason"] == "interrupted"
    assert rec.of("error")[0]["ename"] == "KeyboardInterrupt"
    assert not rec.of("notice")  # nothing lost
    status, rec = run(session, "kept")
    assert rec.of("execute_result")[0]["data"]["text/plain"] == "'yes'"


def test_hard_interrupt_restarts_session_and_says_so():
    s = PythonSession()
    try:
        run(s, "lost = 1")
        rec = Recorder()
        t = {}

        def stop():
            t["at"] = time.monotonic()
            s.interrupt()

        threading.Timer(0.3, stop).start()
        status = s.run("while True: pass", emit=rec, timeout_s=30)
        assert time.monotonic() - t["at"] < 1.0
        assert status["reason"] == "interrupted"
        assert "lost" in rec.of("notice")[0]["text"]
        status, rec = run(s, "lost")
        assert "fresh Python session" in rec.of("notice")[0]["text"]
        assert rec.of("error")[0]["ename"] == "NameError"
        # timeout of a tight loop: same story, and the session works afterwards
        status, rec = run(s, "while True: pass", timeout_s=0.5)
        assert status["reason"] == "timeout" and rec.of("error")[0]["ename"] == "TimeoutError"
        assert run(s, "1 + 1")[1].of("execute_result")[0]["data"]["text/plain"] == "2"
    finally:
        s.close()


@pytest.mark.parametrize("code", ["exit()", "import os; os._exit(3)"])
def test_exit_ends_session_and_next_cell_is_fresh(code):
    s = PythonSession()
    try:
        run(s, "gone = 1")
        status, rec = run(s, code)
        assert status["reason"] == "exit"
        assert "has ended" in rec.of("notice")[0]["text"]
        status, rec = run(s, "gone")
        assert "fresh Python session" in rec.of("notice")[0]["text"]
        assert rec.of("error")[0]["ename"] == "NameError"
    finally:
        s.close()


def test_sklearn_sample_images_are_in_the_keep(session):
    from keepbook.keep.shared import guest_data

    if not guest_data.files():
        pytest.skip("scikit-learn's sample images are not cached: run `keepbook warm` where "
                    "PyPI can be reached")
    status, rec = run(session, "from sklearn.datasets import load_sample_images\n"
                               "[img.shape for img in load_sample_images().images]")
    assert status["ok"], rec.events
    assert rec.of("execute_result")[0]["data"]["text/plain"] == "[(427, 640, 3), (427, 640, 3)]"


def test_only_the_listed_packages_are_imported_from_the_staged_folder(session):
    from keepbook.keep.shared import guest_packages

    run(session, "import matplotlib.pyplot as plt\nplt.plot([1]);\n%time 1")
    status, rec = run(session, "import sys\nsorted({m.split('.')[0] for m, v in "
                               "list(sys.modules.items()) if '/opt/keep/site/' in "
                               "str(getattr(v, '__file__', ''))})")
    loaded = eval(rec.of("execute_result")[0]["data"]["text/plain"])
    tops = {rel.split("/")[0].removesuffix(".py") for rel, _ in guest_packages.files()}
    assert set(loaded) - {"_keep_guest", "_keep_driver"} <= tops and "IPython" in loaded


def test_a_pooled_keeps_spare_session_is_adopted_only_for_its_limit_and_folder(tmp_path):
    """prewarm boots the session before any client (pysession.open_spare); the Keep's first
    Python cell uses it when limit and /data folder are the ones it was opened for — it sees
    files that arrive in /data later, counts its cells as a fresh session does, and outputs reach the adopting session —
    and a Keep with another limit closes it unused."""
    from keepbook.keep.inside import pysession

    data = tmp_path / "data"
    data.mkdir()
    limit = 256 * 1024 * 1024
    pysession.open_spare(limit, str(data))
    (data / "later.txt").write_text("arrived after the session opened")
    s = PythonSession(memory_bytes=limit, data_dir=str(data))
    try:
        status, rec = run(s, "print(open('/data/later.txt').read())\nget_ipython().execution_count")
        assert status["ok"], rec.events
        assert s.adopted and pysession._spare is None
        assert rec.stdout() == "arrived after the session opened\n"
        adopted_count = rec.of("execute_result")[0]["data"]["text/plain"]
    finally:
        s.close()

    pysession.open_spare(limit, str(data))
    spare = pysession._spare[2]
    other = PythonSession(memory_bytes=2 * limit, data_dir=str(data))
    try:
        status, rec = run(other, "get_ipython().execution_count")
        assert status["ok"] and not other.adopted
        # no cell ran in the spare before it was adopted: it counts as a fresh session does
        assert rec.of("execute_result")[0]["data"]["text/plain"] == adopted_count
        assert pysession._spare is None and spare.ended is not None  # closed, not kept
    finally:
        other.close()


def test_a_cell_cannot_write_the_bytecode_other_sessions_read(session):
    """The guest's bytecode folder (shared between Keeps once filled, see guest_site) is
    granted read-only to every session that runs cells."""
    status, rec = run(session, "import sys\ntry:\n    open(sys.pycache_prefix + '/planted.pyc', 'wb')\n"
                               "    print('written')\nexcept OSError as e:\n    print('refused', type(e).__name__)")
    assert status["ok"], rec.events
    assert rec.stdout().startswith("refused"), rec.stdout()
