"""keepbook's IPython shell inside the Keep.  NOT imported on the host.

The Keep's Python session is IPython's own ``InteractiveShell`` (staged into the Keep read-only
and measured, see ``keep/guest_packages.py``), subclassed the way ipykernel subclasses it: its
display publisher, display hook, traceback display and pager send Jupyter-shaped messages
through the Keep's door (``driver.send``) instead of ZeroMQ, so every output still passes the
Keep's policy gate.  Why the real shell and not a re-write: a notebook written for ipykernel then
finds the same magics (``%time``, ``%timeit``, ``%who``, ``%config``, ``%precision``...), the
same syntax (``obj?``, ``!cmd``, ``%%cell``, a trailing ``;``), the same pretty printer and
display objects, and ``get_ipython()`` as libraries (matplotlib, pandas) expect it.

What differs from ipykernel, on purpose:

* ``!cmd``, ``%%bash``, ``%%sh``, ``%%script``, ``%sx``... — a Keep has no shell: it runs this
  one interpreter (WebAssembly, no processes), so they fail with that reason.
* ``%pip``/``%conda`` (and ``!pip install``) — the Keep's image is fixed and measured: nothing
  can be installed; a package that is already there is accepted with a note, anything else is
  an error listing what the image has.
* ``%matplotlib`` — ``inline`` (the default) only: a GUI or widget backend needs a screen or a
  live browser channel, which a Keep does not have.
* ``%load_ext`` of an extension that is not in the image warns and goes on.
* ``input()`` and ``exit()`` keep the Keep's meaning (see driver.py).
"""

import base64
import sys
from importlib import metadata

from IPython.core import page
from IPython.core.autocall import ExitAutocall
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_magic, magics_class
from traitlets import default
from traitlets.config import Config

from . import door

NO_SHELL = ("a Keep has no shell: it runs only this Python interpreter (compiled to "
            "WebAssembly, without processes or programs to start), so {what} cannot run here. "
            "Use Python instead (os, pathlib, open(), pandas)")
FIXED_IMAGE = ("the Keep's Python image is fixed and measured (its digest is part of the "
               "attestation), so nothing can be installed into it")
KERNEL_MAGICS = ("keep", "attest", "upload", "audit")
SHELL_MAGICS = ("bash", "sh", "script", "perl", "ruby", "pypy", "python2", "python3")
SHELL_LINE_MAGICS = ("sx", "system", "sc")
PACKAGE_MANAGERS = ("pip", "conda", "mamba", "micromamba", "uv")
INLINE = ("inline", "module://matplotlib_inline.backend_inline")


class KeepExit(BaseException):
    """exit()/quit() in a cell: end the session on purpose (the Keep announces it)."""


def _jsonable(mime, value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        if mime.startswith("image/") and mime != "image/svg+xml":
            return base64.b64encode(bytes(value)).decode("ascii")
        return bytes(value).decode("utf-8", "replace")
    return value


def _bundle(data):
    return {str(k): _jsonable(str(k), v) for k, v in (data or {}).items()}


class KeepDisplayPublisher(DisplayPublisher):
    """display(), update_display(), clear_output() → the door (then the Keep's policy gate)."""

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False,
                **kwargs):
        door.flush_streams()
        door.send({"op": "display", "data": _bundle(data), "metadata": metadata or {},
                   "transient": transient or {}, "update": bool(update)})

    def clear_output(self, wait=False):
        door.flush_streams()
        door.send({"op": "clear", "wait": bool(wait)})


class KeepDisplayHook(DisplayHook):
    """The value of a cell's last expression → one ``execute_result``."""

    _pending = None

    def start_displayhook(self):
        self._pending = None

    def write_output_prompt(self):
        pass

    def write_format_data(self, format_dict, md_dict=None):
        self._pending = (format_dict, md_dict)

    def finish_displayhook(self):
        door.flush_streams()
        pending, self._pending = self._pending, None
        if pending and pending[0]:
            door.send({"op": "result", "data": _bundle(pending[0]), "metadata": pending[1] or {}})


class _NoKernel:
    """``get_ipython().kernel``: libraries test for it to tell a notebook from a terminal
    (pandas then shows 20 columns, as in ipykernel).  There is no Jupyter kernel inside a Keep."""

    def __repr__(self):
        return "<keepbook Keep: cells arrive over the attested channel; no Jupyter kernel here>"


def image_packages():
    """(name, version) of every distribution in the Keep's Python image."""
    seen = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = (name, dist.version)
    return sorted(seen.values(), key=lambda nv: nv[0].lower())


def _image_listing():
    return ", ".join(f"{n} {v}" for n, v in image_packages())


def _requested(words):
    """Package names in an ``install`` command line (options and version specs dropped)."""
    import re

    names = []
    for w in words:
        if w.startswith("-") or "/" in w or w.startswith("."):
            continue
        m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", w)
        if m:
            names.append(m.group(0))
    return names


def package_manager(tool, line):
    """%pip / %conda / ``!pip``: nothing is installed; a package already in the image is
    accepted with a note, anything else is an error that lists the image."""
    words = line.split()
    verb = words[0] if words else ""
    if verb in ("list", "freeze"):
        print("\n".join(f"{n}=={v}" for n, v in image_packages()))
        return
    if verb == "show":
        have = {n.lower(): (n, v) for n, v in image_packages()}
        for name in words[1:]:
            got = have.get(name.lower().replace("_", "-")) or have.get(name.lower())
            print(f"Name: {got[0]}\nVersion: {got[1]}" if got else
                  f"WARNING: Package(s) not found: {name}")
        return
    if verb != "install":
        raise UsageError(f"%{tool} {line}: {FIXED_IMAGE}. It has: {_image_listing()}")
    have = {n.lower().replace("_", "-") for n, _ in image_packages()}
    wanted = _requested(words[1:])
    missing = [w for w in wanted if w.lower().replace("_", "-") not in have]
    if missing or not wanted:
        raise UsageError(f"%{tool} install {' '.join(words[1:])}: {FIXED_IMAGE}; "
                         f"{', '.join(missing) or 'that'} is not in it. It has: {_image_listing()}")
    versions = {n.lower().replace("_", "-"): v for n, v in image_packages()}
    print(f"[keepbook] {FIXED_IMAGE}; already in it: " + ", ".join(
        f"{w} {versions[w.lower().replace('_', '-')]}" for w in wanted) + " — nothing installed.",
        file=sys.stderr)


@magics_class
class KeepMagics(Magics):
    """The magics whose meaning a Keep changes (see the module docstring)."""

    @line_magic
    def matplotlib(self, line=""):
        from IPython.core.magics.pylab import PylabMagics

        words = line.split()
        gui = next((w for w in words if not w.startswith("-")), None)
        if gui is not None and gui not in INLINE:
            raise UsageError(
                f"%matplotlib {gui}: a Keep has no screen and no live channel to the browser, "
                f"so interactive backends cannot run; figures come back as PNG images: use "
                f"%matplotlib inline (the default)")
        return PylabMagics(self.shell).matplotlib(line)

    @line_magic
    def load_ext(self, module_str=""):
        import importlib.util

        name = module_str.strip()
        try:
            found = bool(name) and importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            print(f"[keepbook] %load_ext {name}: no module named {name!r} in the Keep's Python "
                  f"image (fixed and measured); the extension was not loaded, the cell goes on.",
                  file=sys.stderr)
            return None
        return self.shell.extension_manager.load_extension(name)


def _add_fixed_magics(shell):
    """Register the refusals whose names are data: shell cell magics, package managers and the
    kernel's own magics (which run on the user's machine, not here)."""

    def shell_cell(name):
        def magic(line, cell=None):
            raise UsageError(NO_SHELL.format(what=f"%%{name}"))
        return magic

    def shell_line(name):
        def magic(line=""):
            raise UsageError(NO_SHELL.format(what=f"%{name} {line}".strip()))
        return magic

    def manager(name):
        def magic(line):
            return package_manager(name, line)
        return magic

    def kernel_side(name):
        def magic(line=""):
            raise UsageError(f"%{name} runs on your machine, not in the Keep: put it on its own "
                             f"line at the top of a cell")
        return magic

    for name in SHELL_MAGICS:
        shell.register_magic_function(shell_cell(name), "cell", name)
    for name in SHELL_LINE_MAGICS:
        shell.register_magic_function(shell_line(name), "line", name)
    for name in PACKAGE_MANAGERS:
        shell.register_magic_function(manager(name), "line", name)
    for name in KERNEL_MAGICS:
        shell.register_magic_function(kernel_side(name), "line", name)


class KeepExitAutocall(ExitAutocall):
    """``exit``/``quit`` as ipykernel's: callable with an argument (``exit(3)``), ending the
    session on purpose."""

    def __call__(self, code=None):
        raise KeepExit(*(() if code is None else (code,)))


class KeepShell(InteractiveShell):
    """InteractiveShell with the Keep's door for every output (compare ipykernel's
    ZMQInteractiveShell)."""

    @default("exiter")
    def _exiter_default(self):
        return KeepExitAutocall(self)

    displayhook_class = KeepDisplayHook
    display_pub_class = KeepDisplayPublisher
    kernel = _NoKernel()

    def init_hooks(self):
        super().init_hooks()
        self.set_hook("show_in_pager", page.as_hook(self._page), 99)

    def init_magics(self):
        super().init_magics()
        self.register_magics(KeepMagics)
        _add_fixed_magics(self)

    def _page(self, strg, start=0, screen_lines=0, pager_cmd=None):
        """``obj?`` and other pager output: a ``page`` payload, as ipykernel sends it."""
        data = strg if isinstance(strg, dict) else {"text/plain": strg}
        door.flush_streams()
        door.send({"op": "page", "data": _bundle(data), "start": max(0, int(start or 0))})

    def enable_gui(self, gui=None):
        if gui not in (None, "inline", "headless"):
            raise UsageError(f"a Keep has no screen: the {gui} event loop cannot run here; "
                             f"figures come back inline")

    def _showtraceback(self, etype, evalue, stb):
        door.flush_streams()
        door.send_error(str(etype.__name__), str(evalue), [str(line) for line in stb])

    def show_usage_error(self, exc):
        """A UsageError (an unknown magic, a refused one) is a clear error naming it."""
        door.flush_streams()
        door.send_error("UsageError", str(exc), [f"UsageError: {exc}"])

    def system(self, cmd):
        words = cmd.split()
        if len(words) >= 2 and words[0] in PACKAGE_MANAGERS + ("pip3",):
            return package_manager(words[0].rstrip("3"), " ".join(words[1:]))
        raise UsageError(NO_SHELL.format(what=f"!{cmd}"))

    system_raw = system_piped = system

    def getoutput(self, cmd, split=True, depth=0):
        raise UsageError(NO_SHELL.format(what=f"!!{cmd}"))

    def ask_exit(self):
        raise KeepExit()


def _on_keep_exit(shell, etype, value, tb, tb_offset=None):
    code = value.args[0] if value.args else None
    door.send({"op": "exit", "code": code if isinstance(code, (int, str)) else None})
    return []


def make_shell():
    """The session's one shell (``get_ipython()``), configured like ipykernel's where it
    matters: history kept in memory only (no file, no saving thread), no jedi (not staged)."""
    cfg = Config()
    cfg.HistoryManager.hist_file = ":memory:"
    cfg.IPCompleter.use_jedi = False
    cfg.InteractiveShell.autoindent = False
    cfg.InteractiveShell.colors = "neutral"
    shell = KeepShell.instance(config=cfg)
    shell.set_custom_exc((KeepExit,), _on_keep_exit)
    return shell
