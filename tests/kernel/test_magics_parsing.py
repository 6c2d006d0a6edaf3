"""Magic parsing is pure: text in, a typed command or a clear UsageError out."""

from __future__ import annotations

import pytest

from keepbook.kernel import magics as mg


def test_parameters_cell_is_literal_assignments_only():
    assert mg.parse_parameters('# Parameters\nbackend = "sim-tdx"\nn = 3\n') == {"backend": "sim-tdx", "n": 3}
    assert mg.parse_parameters('# parameters (papermill)\nx = [1, 2]') == {"x": [1, 2]}
    # anything that would need running code is not a parameters cell: it goes to the Keep
    assert mg.parse_parameters("# Parameters\nimport os") is None
    assert mg.parse_parameters("# Parameters\nx = os.getcwd()") is None
    assert mg.parse_parameters("# Parameters\nx, y = 1, 2") is None
    assert mg.parse_parameters("x = 1") is None
    assert mg.parse_parameters("# Parameters\nx = (") is None


def test_placeholders_fill_magic_lines_only():
    cell = mg.parse_cell("%keep new --backend {backend} --profile {profile}\nprint('{backend}')",
                         {"backend": "sim-tdx", "profile": "production"})
    assert cell.magics[0].args.backend == "sim-tdx" and cell.magics[0].args.profile == "production"
    assert cell.python == "print('{backend}')"  # Python for the Keep is never rewritten


def test_placeholder_values_are_quoted_and_unknown_ones_kept():
    assert mg.substitute("%upload {path}", {"path": "my data.csv"}) == "%upload 'my data.csv'"
    assert mg.substitute("%keep new --backend {other}", {"backend": "nil"}) == "%keep new --backend {other}"
    with pytest.raises(mg.MagicError, match="invalid choice"):
        mg.parse_cell("%keep new --profile {profile}", {})


@pytest.mark.parametrize("line,reason", [
    ("%keep", "needs one of"), ("%keep explode", "needs one of"),
    ("%keep status now", "takes no arguments"), ("%keep new --memory lots", "not a size"),
    ("%keep new --timeout -1", "must be positive"), ('%keep new --backend "unclosed', "No closing quotation"),
])
def test_bad_line_magics_say_why(line, reason):
    with pytest.raises(mg.MagicError, match=reason):
        mg.parse_cell(line)


def test_ipython_magics_go_to_the_keeps_shell():
    cell = mg.parse_cell("%keep status\n%matplotlib inline\nimport numpy as np\n%time np.ones(3)")
    assert [m.sub for m in cell.magics] == ["status"]  # the kernel runs only its own magics
    assert cell.python == "%matplotlib inline\nimport numpy as np\n%time np.ones(3)"
    assert mg.parse_cell("%nope 1").python == "%nope 1"  # the Keep's shell names it in its error
    cell = mg.parse_cell("%%timeit -n1\nsum(range(10))")
    assert cell.cell_magic is None and cell.python == "%%timeit -n1\nsum(range(10))"
    assert mg.parse_cell("%%wat\n(module)").cell_magic.name == "wat"


def test_sizes():
    assert mg.parse_size("512MiB") == 512 * 1024**2
    assert mg.parse_size("1G") == 10**9
    assert mg.parse_size("2048") == 2048


@pytest.mark.parametrize("line,expected", [
    ("%keep new --backend sim-", {"sim-snp", "sim-tdx", "sim-sgx", "sim-cca"}),
    ("%keep new --profile p", {"production"}),
    ("%keep new --man", {"--manager", "--manager-ca"}),
    ("%attest --ex", {"--explain"}),
    ("%review a", {"approve"}),
    ("%review list --al", {"--allow-simulated"}),
    ("%review --profile p", {"production"}),
    ("%ke", {"%keep"}),
    ("%tim", {"%time", "%timeit"}),
    ("%%tim", {"%%time", "%%timeit"}),
    ("%%wa", {"%%wat", "%%wasm"}),
])
def test_tab_completes_magics_options_and_values(line, expected):
    matches, start, end = mg.complete_magic(line, len(line))
    assert set(matches) == expected
    assert end == len(line) and line[start:end] in {"sim-", "p", "--man", "--ex", "%ke", "%tim",
                                                    "%%tim", "%%wa", "a", "--al"}


def test_wasi_options_of_wasm_and_compiled_cells():
    cell = mg.parse_cell("%%wat --arg a --arg=-b --env K=V=W --stdin -\n(module)\n%%stdin\nin")
    m = cell.cell_magic
    assert m.args.argv == ["a", "-b"] and m.args.env == [("K", "V=W")]
    assert m.body == "(module)" and m.stdin_text == "in\n"
    with pytest.raises(mg.MagicError, match="NAME=VALUE"):
        mg.parse_cell("%%c --env NOVALUE\nint main(){}")
    with pytest.raises(mg.MagicError, match="has no such line"):
        mg.parse_cell("%%c --stdin -\nint main(){}")
    with pytest.raises(mg.MagicError, match="keep one"):
        mg.parse_cell("%%c --stdin in.txt\nint main(){}\n%%stdin\nx")
