"""The guest's side of the Keep's door (``_host.call``).  NOT imported on the host.

Every output leaves the interpreter as one JSON frame through the door, while the cell runs.
The door's answer carries the host's wishes (inside a JSON answer's ``signal`` for
:func:`ask`): ``I`` = interrupt, ``D`` = deadline (raised as
KeyboardInterrupt / TimeoutError at the next door call, so state survives when the cell prints
or sleeps), ``T`` = output cap reached (stop sending stream text).

``sys.stdout``/``sys.stderr`` become :class:`Stream` objects that send text through the door,
coalesced: a flush at most every 20 ms, or on 32 KiB, and always at cell end.
"""

import io
import json
import sys
import time

import _host

STATE = {"quiet": False, "last_flush": 0.0, "errored": False}


def send(msg):
    answer = _host.call(json.dumps(msg, separators=(",", ":"), default=str).encode("utf-8"))
    _obey(answer)


def ask(msg, default=str):
    """A door call whose answer is a JSON object (a trusted query's); the host's wish
    (interrupt, deadline) rides along in it as ``signal``."""
    flush_streams()
    raw = _host.call(json.dumps(msg, separators=(",", ":"), allow_nan=False,
                                default=default).encode("utf-8"))
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        _obey(raw)
        raise RuntimeError("the Keep answered no query")
    signal = answer.get("signal")
    if signal in ("I", "D", "T"):
        _obey(signal.encode())
    return answer


def send_error(ename, evalue, traceback):
    """An error of the running cell (remembered: a cell whose error could not be formatted
    still reports one, see driver.run_cell)."""
    STATE["errored"] = True
    send({"op": "error", "ename": ename, "evalue": evalue, "traceback": traceback})


def poll():
    flush_streams()
    _obey(_host.call(b'{"op":"poll"}'))


def _obey(answer):
    if not answer or answer == b".":
        return
    if answer == b"T":
        STATE["quiet"] = True
    elif answer == b"I":
        raise KeyboardInterrupt("interrupted by the user")
    elif answer == b"D":
        raise TimeoutError("the cell ran past its deadline")


class Stream(io.TextIOBase):
    """A text stream that sends its writes through the door (coalesced)."""

    def __init__(self, name):
        self.name = name
        self._buf = []
        self._size = 0

    def writable(self):
        return True

    @property
    def encoding(self):
        return "utf-8"

    def isatty(self):
        return False

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not text:
            return 0
        if STATE["quiet"]:
            return len(text)
        self._buf.append(text)
        self._size += len(text)
        if self._size >= 32768:
            self.flush()
        elif "\n" in text and time.monotonic() - STATE["last_flush"] >= 0.02:
            self.flush(whole_lines=True)
        return len(text)

    def flush(self, whole_lines=False):
        if not self._buf:
            return
        text = "".join(self._buf)
        rest = ""
        if whole_lines:
            cut = text.rfind("\n") + 1
            text, rest = text[:cut], text[cut:]
        self._buf, self._size = ([rest], len(rest)) if rest else ([], 0)
        STATE["last_flush"] = time.monotonic()
        if text and not STATE["quiet"]:
            send({"op": "stream", "name": self.name, "text": text})


def flush_streams():
    for s in (sys.stdout, sys.stderr):
        if isinstance(s, Stream):
            s.flush()
