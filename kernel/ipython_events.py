"""The Jupyter messages for the events of IPython's display machinery in the Keep: a display
with a ``display_id``, ``update_display``, ``clear_output`` and the pager's ``page`` (``obj?``),
which ipykernel returns as a payload of the execute reply.  Kept apart from the front end so its
cell path stays short: :func:`publish` returns False for the kinds it does not handle."""

from __future__ import annotations

from typing import Any, Callable

from keepbook.keep.shared import protocol
from keepbook.kernel.presenting import jupyter_mime

Send = Callable[[str, dict], None]


def transient(content: dict) -> dict:
    """The ``transient`` of a display event: only a ``display_id`` (text) is kept."""
    t = content.get("transient")
    display_id = t.get("display_id") if isinstance(t, dict) else None
    return {"display_id": display_id} if isinstance(display_id, str) else {}


def page_payload(content: dict) -> dict:
    """``obj?``'s answer as ipykernel's execute_reply carries it (a ``page`` payload)."""
    start = content.get("start")
    return {"source": "page", "data": jupyter_mime(content.get("data")),
            "start": start if isinstance(start, int) and start >= 0 else 0}


def publish(event: protocol.Event, send: Send, payloads: list[dict]) -> bool:
    """Send the IOPub message for ``event`` (or keep its payload); False if not ours."""
    c: dict[str, Any] = event.content
    if event.kind == "display_data":
        send("display_data", {"data": jupyter_mime(c.get("data")),
                              "metadata": c.get("metadata") or {}, "transient": transient(c)})
    elif event.kind == "update_display_data":
        if transient(c):  # an update without an id has nothing to update
            send("update_display_data", {"data": jupyter_mime(c.get("data")),
                                         "metadata": c.get("metadata") or {},
                                         "transient": transient(c)})
    elif event.kind == "clear_output":
        send("clear_output", {"wait": c.get("wait") is True})
    elif event.kind == "page":
        payloads.append(page_payload(c))
    else:
        return False
    return True
