"""What the user sees of a Keep: the trust vector and the Keep status, as ipywidgets with HTML
and text/plain fallbacks (so nbclient, nbconvert and terminals stay readable)."""

from __future__ import annotations

import html
from typing import Any

from keepbook.keep.evidence.trust import Status, TrustVector

BADGE_COLOURS = {"hardware": "#1b7f3b", "simulated": "#b36b00", "none": "#b00020"}
STATUS_COLOURS = {Status.VERIFIED: "#1b7f3b", Status.FAILED: "#b00020", Status.UNVERIFIED: "#666"}


def badge_html(protection: str, label: str) -> str:
    colour = BADGE_COLOURS.get(protection, "#444")
    return (f'<span class="keepbook-badge" style="background:{colour};color:white;padding:2px 8px;'
            f'border-radius:4px;font-weight:bold">{html.escape(label)}</span>')


def trust_vector_html(tv: TrustVector, explain: bool = False) -> str:
    result = ("VERIFIED" if tv.ok else "REJECTED — " + html.escape(tv.first_failure()))
    colour = "#1b7f3b" if tv.ok else "#b00020"
    rows = []
    for c in tv.claims:
        req = " *" if c.name in tv.required else ""
        rows.append(
            f'<tr class="keepbook-claim" data-claim="{html.escape(c.name)}" data-status="{c.status.value}">'
            f'<td style="color:{STATUS_COLOURS[c.status]};font-weight:bold;padding:1px 6px">{c.status.mark}</td>'
            f'<td style="padding:1px 6px;white-space:nowrap"><code>{html.escape(c.name)}</code>{req}</td>'
            f'<td style="padding:1px 6px;color:{STATUS_COLOURS[c.status]}">{c.status.value}</td>'
            f'<td style="padding:1px 6px">{html.escape(c.reason)}</td></tr>')
    parts = [f'<div class="keepbook-trust-vector"><div><b>Trust vector</b> ({html.escape(tv.kind)}) '
             f"{badge_html(tv.protection, tv.label)}</div>",
             '<table style="border-collapse:collapse;text-align:left">'
             '<tr><th></th><th>claim</th><th>status</th><th>reason</th></tr>',
             "".join(rows), "</table>",
             f'<div style="color:{colour};font-weight:bold">RESULT: {result}</div>',
             "<small>* required by your trust policy</small>"]
    if explain and tv.fields:
        parts.append(fields_html(tv))
    parts.append("</div>")
    return "".join(parts)


def fields_html(tv: TrustVector) -> str:
    rows = "".join(f"<tr><td><code>{html.escape(n)}</code></td><td><code>{html.escape(_short(v))}</code>"
                   f"</td><td>{html.escape(e)}</td></tr>" for n, v, e in tv.fields)
    return (f"<details open><summary>Evidence fields ({len(tv.fields)})</summary>"
            f"<table><tr><th>field</th><th>value</th><th>what it means</th></tr>{rows}</table></details>")


def fields_text(tv: TrustVector) -> str:
    if not tv.fields:
        return "(this evidence kind has no fields to explain)"
    width = max(len(n) for n, _, _ in tv.fields)
    return "\n".join(f"{n:<{width}}  {_short(v)}\n{'':<{width}}  ↳ {e}" for n, v, e in tv.fields)


def _short(v: str, limit: int = 96) -> str:
    return v if len(v) <= limit else v[:limit] + "…"


def trust_vector_widget(tv: TrustVector, explain: bool = False) -> Any:
    """An ipywidgets view: a badge, one row per claim (✔/✗/?) with its reason, and one
    expandable section with every claim's detail (open when a claim failed)."""
    import ipywidgets as w

    table = w.HTML(trust_vector_html(tv, explain=False))
    rows = []
    for c in tv.claims:
        extra = "".join(f"<br><small><code>{html.escape(str(k))}</code>: "
                        f"{html.escape(_short(str(v), 200))}</small>" for k, v in c.detail.items())
        rows.append(f'<div style="margin-bottom:4px"><span style="color:{STATUS_COLOURS[c.status]}">'
                    f"{c.status.mark}</span> <b>{html.escape(c.name)}</b> ({c.status.value}): "
                    f"{html.escape(c.reason)}{extra}</div>")
    details = w.Accordion(children=[w.HTML("".join(rows))], titles=("Claim details",))
    details.selected_index = 0 if any(c.status is Status.FAILED for c in tv.claims) else None
    children = [table, details]
    if explain and tv.fields:
        children.append(w.HTML(fields_html(tv)))
    box = w.VBox(children)
    box.add_class("keepbook-trust-vector-widget")
    return box


def status_text(status: dict) -> str:
    width = max(len(k) for k in status) if status else 0
    return "\n".join(f"{k:<{width}}  {v}" for k, v in status.items())


def status_html(status: dict) -> str:
    prot = status.get("protection", "")
    kind = ("hardware" if prot == "PROTECTED" else "simulated" if prot.startswith("SIMULATED")
            else "none" if prot else "")
    badge = badge_html(kind, prot) if prot else ""
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in status.items())
    return f'<div class="keepbook-status"><b>Keep</b> {badge}<table>{rows}</table></div>'


def status_widget(status: dict) -> Any:
    import ipywidgets as w

    box = w.VBox([w.HTML(status_html(status))])
    box.add_class("keepbook-status")
    return box
