"""IPython's habits through the keepbook kernel where a Keep answers on purpose differently from
ipykernel, or where the answer is not a cell output: the pager's payload (obj?), refusals with
their reason, unknown magics, is_complete and completion before any Keep exists."""

from __future__ import annotations

import re

import pytest

from tests.kernel.kernel_client import Kernel, ok

pytestmark = pytest.mark.slow
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    try:
        yield k
    finally:
        k.close()


def _reply(kernel: Kernel, method: str, *args) -> dict:
    msg_id = getattr(kernel.kc, method)(*args)
    reply = kernel.kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kernel.kc.get_shell_msg(timeout=30)
    return reply["content"]


def test_before_any_keep_completion_and_is_complete_answer_by_parsing_only(kernel):
    assert "print" in _reply(kernel, "complete", "pri", 3)["matches"]
    assert {"%time", "%timeit"} <= set(_reply(kernel, "complete", "%ti", 3)["matches"])
    assert {"%%time", "%%bash", "%%wat"} <= set(_reply(kernel, "complete", "%%", 2)["matches"])
    assert _reply(kernel, "is_complete", "for i in range(3):") == {"status": "incomplete",
                                                                    "indent": "    "}
    assert _reply(kernel, "is_complete", "for i in range(3):\n    print(i)")["status"] == \
        "incomplete"  # an open indented block, as IPython says
    assert _reply(kernel, "is_complete", "x = 1")["status"] == "complete"
    assert _reply(kernel, "is_complete", "x?")["status"] == "complete"
    res = kernel.execute("%keep list")
    assert "(no Keeps)" in res.text()  # none of that made a Keep


def test_obj_question_mark_is_a_page_payload(kernel):
    ok(kernel.execute("squares = [1, 4, 9]"))
    res = ok(kernel.execute("squares?"))
    (page,) = res.reply["content"]["payload"]
    assert page["source"] == "page"
    text = _ANSI.sub("", page["data"]["text/plain"])
    assert "Type:" in text and "list" in text and "[1, 4, 9]" in text
    res = ok(kernel.execute("len??"))
    assert "Return the number of items" in _ANSI.sub("", str(res.reply["content"]["payload"]))


@pytest.mark.parametrize("cell,reason", [
    ("!ls /", "a Keep has no shell"),
    ("%%bash\necho hi", "a Keep has no shell"),
    ("%%sh\necho hi", "a Keep has no shell"),
    ("%pip install definitely-not-in-the-image", "fixed and measured"),
    ("%matplotlib qt", "a Keep has no screen"),
    ("x = 1\n%upload data.csv", "runs on your machine"),
])
def test_refusals_say_why(kernel, cell, reason):
    res = kernel.execute(cell)
    assert res.status == "error"
    (err,) = res.errors()
    assert err["ename"] == "UsageError" and reason in err["evalue"]


def test_pip_lists_the_image_and_accepts_what_is_there(kernel):
    res = kernel.execute("%pip install definitely-not-in-the-image")
    assert "numpy" in res.errors()[0]["evalue"] and "pandas" in res.errors()[0]["evalue"]
    res = ok(kernel.execute("%pip install pandas"))
    assert "already in it: pandas" in res.stream("stderr")


def test_an_unknown_magic_is_named_and_the_lines_before_it_ran(kernel):
    res = kernel.execute("before = 'ran'\n%nosuchmagic 1\nafter = 'ran'")
    (err,) = res.errors()
    assert err["ename"] == "UsageError" and "nosuchmagic" in err["evalue"]
    assert "ran" in kernel.execute("before").text()
    assert kernel.execute("after").errors()[0]["ename"] == "NameError"


def test_known_noop_magics_warn_and_go_on(kernel):
    res = ok(kernel.execute("%load_ext not_an_extension\n%matplotlib inline\nprint('went on')"))
    assert res.stream("stdout") == "went on\n"
    assert "not_an_extension" in res.stream("stderr") and "goes on" in res.stream("stderr")


def test_get_ipython_behaves_as_libraries_expect(kernel):
    code = ("import matplotlib.pyplot as plt, pandas as pd\n"
            "ip = get_ipython()\n"
            "ip.events.callbacks['post_execute'] != [], pd.get_option('display.max_columns')")
    assert ok(kernel.execute(code)).of_type("execute_result")[0]["data"]["text/plain"] \
        == "(True, 20)"  # matplotlib hooked in; pandas took the notebook's 20 columns
