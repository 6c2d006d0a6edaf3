"""The keepbook kernel through jupyter_client, as every frontend sees it."""

from __future__ import annotations

import unittest

import jupyter_kernel_test as jkt
from jupyter_kernel_test import msgspec_v5

from tests.support.cells import print_wat

# The message-spec schemas shipped with jupyter_kernel_test lack the comm messages that
# ipywidgets send (they are part of the Jupyter messaging spec); add them so the widget-backed
# outputs validate instead of being skipped.
for _name in ("comm_open", "comm_msg", "comm_close"):
    msgspec_v5.schema_fragments.setdefault(_name, {
        "properties": {"comm_id": {"type": "string"}, "data": {"type": "object"},
                       "target_name": {"type": "string"}, "target_module": {"type": ["string", "null"]},
                       "metadata": {"type": "object"}},
        "required": ["comm_id", "data"]})




class KeepbookKernelTests(jkt.KernelTests):
    kernel_name = "keepbook"
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "%%wat\n" + print_wat("hello, world\n")
    code_stderr = "%%wat\n" + print_wat("hello, world\n", fd=2)
    completion_samples = [{"text": "%ke", "matches": {"%keep"}},
                          {"text": "%%wa", "matches": {"%%wat", "%%wasm"}},
                          {"text": "%keep st", "matches": {"status"}}]
    complete_code_samples = ["1 + 1", "%keep status", "x = [1,\n 2]"]
    incomplete_code_samples = ["def f(x):", "x = [1,", "for i in range(3):\n    print(i)"]
    # as IPython answers (an unclosed "(" is incomplete, not invalid: "def (:" is incomplete)
    invalid_code_samples = ["1 +* 2", "x = )", "return return"]
    # IPython's display machinery and pager, in the Keep's Python session
    code_clear_output = "from IPython.display import clear_output\nclear_output()"
    code_page_something = "len?"
    code_generate_error = '%%wat\n(module (func (export "_start") unreachable))'
    code_execute_result = [
        {"code": '%%wat --invoke add 2 3\n(module (func (export "add") (param i32 i32) (result i32) '
                 'local.get 0 local.get 1 i32.add))', "result": "5"},
        {"code": "6 * 7", "result": "42"},
    ]
    code_display_data = [{"code": "%attest", "mime": "text/plain"},
                         {"code": "%keep status", "mime": "text/html"}]


if __name__ == "__main__":
    unittest.main()
