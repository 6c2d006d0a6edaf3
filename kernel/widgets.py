"""What the user sees of a Keep: the trust vector and the Keep status, as ipywidgets with HTML
and text/plain fallbacks (so nbclient, nbconvert and terminals stay readable)."""

from __future__ import annotations

import html
from typing import Any

from keepbook.keep.shared.evidence.trust import Status, TrustVector

BADGE_COLOURS = {"hardware": "#1b7f3b", "simulated": "#b36b00", "none": "#b00020"}
STATUS_COLOURS = {Status.VERIFIED: "#1b7f3b", Status.FAILED: "#b00020", Status.UNVERIFIED: "#666"}


def badge_html(protection: str, label: str) -> str:
    colour = BADGE_COLOURS.get(protection, "#444")
    return (f'<span class="keepbook-badge" style="background:{colour};color:white;padding:2px 8px;'
            f'border-radius:4px;font-weight:bold">{html.escape(label)}</span>')


FINGERPRINT_HINT = ("read it to the data owner: `keepbook seal --keep-fingerprint` refuses any "
                    "other Keep")


def fingerprint_text(fingerprint: str | None) -> str:
    """The Keep fingerprint line under a verified trust vector (empty without one)."""
    return f"Keep fingerprint: {fingerprint} — {FINGERPRINT_HINT}" if fingerprint else ""


def trust_vector_html(tv: TrustVector, explain: bool = False, fingerprint: str | None = None) -> str:
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
    if fingerprint:
        parts.append(f'<div class="keepbook-fingerprint">Keep fingerprint: <code>'
                     f'{html.escape(fingerprint)}</code> — <small>{html.escape(FINGERPRINT_HINT)}'
                     f"</small></div>")
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


def trust_vector_widget(tv: TrustVector, explain: bool = False, fingerprint: str | None = None) -> Any:
    """An ipywidgets view: a badge, one row per claim (✔/✗/?) with its reason, and one
    expandable section with every claim's detail (open when a claim failed)."""
    import ipywidgets as w

    table = w.HTML(trust_vector_html(tv, explain=False, fingerprint=fingerprint))
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


STATUS_LABELS = {"id": "Keep", "backend": "backend", "profile": "profile", "state": "state",
                 "reason": "reason", "protection": "protection", "attested": "attestation",
                 "endpoint": "endpoint", "uptime_s": "uptime", "cells_run": "cells run",
                 "bytes_released": "bytes released", "busy": "running a cell", "channel": "channel",
                 "manager": "keep manager", "host_says": "host says (not attested)"}


def _status_value(key: str, value: Any) -> str:
    if key == "uptime_s" and isinstance(value, (int, float)):
        m, s_ = divmod(int(value), 60)
        h, m = divmod(m, 60)
        return f"{h}h {m:02d}m {s_:02d}s" if h else f"{m}m {s_:02d}s"
    if key == "bytes_released" and isinstance(value, int):
        return f"{value:,} bytes"
    return str(value)


def status_text(status: dict) -> str:
    """Plain text for nbclient and terminals; keys stay machine-readable (``id``, ``cells_run``)."""
    width = max(len(k) for k in status) if status else 0
    return "\n".join(f"{k:<{width}}  {_status_value(k, v)}" for k, v in status.items())


def _protection_kind(label: str) -> str:
    return ("hardware" if label == "PROTECTED" else "simulated" if label.startswith("SIMULATED")
            else "none" if label.startswith("NO PROTECTION") else "")


def status_html(status: dict) -> str:
    prot = str(status.get("protection", ""))
    kind = _protection_kind(prot)
    badge = badge_html(kind, prot) if kind else html.escape(prot)
    rows = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(STATUS_LABELS.get(k, k))}</th>"
                   f"<td style='text-align:left'>{badge if k == 'protection' else html.escape(_status_value(k, v))}</td></tr>"
                   for k, v in status.items())
    return f'<div class="keepbook-status"><b>Keep status</b><table>{rows}</table></div>'


def status_widget(status: dict) -> Any:
    import ipywidgets as w

    box = w.VBox([w.HTML(status_html(status))])
    box.add_class("keepbook-status")
    return box


# ---------------------------------------------------------------------- review and budget

def review_text(requests: list[dict]) -> str:
    """The owner's list of release requests, as text."""
    if not requests:
        return "(no release requests read your data)"
    return "\n".join(f"#{r.get('id')}  {str(r.get('state', '')).upper():<8}  {r.get('type')}  "
                     f"note: {r.get('note') or '(none)'}  datasets: {', '.join(r.get('datasets') or [])}"
                     + (f"  reason: {r['reason']}" if r.get("reason") else "") for r in requests)


def review_html(requests: list[dict]) -> str:
    colours = {"pending": "#b36b00", "approved": "#1b7f3b", "rejected": "#b00020"}
    rows = "".join(
        f'<tr class="keepbook-review-request" data-id="{r.get("id")}" data-state="{html.escape(str(r.get("state")))}">'
        f"<td>#{r.get('id')}</td><td style='color:{colours.get(str(r.get('state')), '#444')};"
        f"font-weight:bold'>{html.escape(str(r.get('state')))}</td><td>{html.escape(str(r.get('type')))}</td>"
        f"<td>{html.escape(str(r.get('note') or ''))}</td>"
        f"<td>{html.escape(', '.join(r.get('datasets') or []))}</td>"
        f"<td>{html.escape(str(r.get('reason') or ''))}</td></tr>" for r in requests)
    return ('<div class="keepbook-review"><b>Release requests</b> (review as the data owner)'
            '<table><tr><th>#</th><th>state</th><th>type</th><th>note</th><th>datasets</th>'
            f'<th>reason</th></tr>{rows}</table></div>')


def review_widget(requests: list[dict], decide: Any) -> Any:
    """The owner's review widget: one row per request; pending ones get Approve and Reject (with
    a reason).  ``decide(id, decision, reason, done)`` sends the decision and calls
    ``done(text)`` with the outcome."""
    import ipywidgets as w

    rows: list[Any] = [w.HTML(review_html(requests))]
    for r in requests:
        if r.get("state") != "pending":
            continue
        rid = int(r["id"])
        reason = w.Text(placeholder="reason (the analyst sees it)", layout=w.Layout(width="40%"))
        status = w.Label("")
        approve = w.Button(description=f"Approve #{rid}", button_style="success")
        reject = w.Button(description=f"Reject #{rid}", button_style="danger")

        def act(decision: str, rid: int = rid, reason: Any = reason, status: Any = status,
                buttons: tuple = (approve, reject)) -> None:
            if decision == "reject" and not reason.value.strip():
                status.value = "a rejection needs a reason"
                return
            for b in buttons:
                b.disabled = True
            status.value = "sending…"

            def done(text: str) -> None:
                status.value = text
            decide(rid, decision, reason.value.strip(), done)
        approve.on_click(lambda _b, act=act: act("approve"))
        reject.on_click(lambda _b, act=act: act("reject"))
        rows.append(w.HBox([approve, reject, reason, status]))
    box = w.VBox(rows)
    box.add_class("keepbook-review-widget")
    return box


def budget_text(budgets: dict[str, dict]) -> str:
    if not budgets:
        return "(no dataset with a privacy budget in this Keep)"
    return "\n".join(f"{name}: ε {b['remaining_epsilon']:g} of {b['epsilon']:g} left, "
                     f"δ {b['remaining_delta']:g} of {b['delta']:g} left, {b['queries']} queries"
                     for name, b in budgets.items())


def budget_html(budgets: dict[str, dict]) -> str:
    rows = []
    for name, b in budgets.items():
        total = b["epsilon"] or 1.0
        left = max(0.0, min(1.0, b["remaining_epsilon"] / total))
        colour = "#1b7f3b" if left > 0.25 else "#b36b00" if left > 0 else "#b00020"
        rows.append(f"<tr class='keepbook-budget' data-dataset='{html.escape(name)}'><td>"
                    f"{html.escape(name)}</td><td><div style='width:160px;background:#ddd'>"
                    f"<div style='width:{left * 160:.0f}px;background:{colour};height:10px'></div>"
                    f"</div></td><td>ε {b['remaining_epsilon']:g} / {b['epsilon']:g} left, "
                    f"δ {b['remaining_delta']:g} / {b['delta']:g}, {b['queries']} queries</td></tr>")
    return ("<div class='keepbook-budgets'><b>Privacy budget</b> (this Keep session)"
            f"<table>{''.join(rows) or '<tr><td>(none)</td></tr>'}</table></div>")


def budget_widget(budgets: dict[str, dict]) -> Any:
    import ipywidgets as w

    rows = [w.HTML("<b>Privacy budget</b> (this Keep session)")]
    for name, b in budgets.items():
        bar = w.FloatProgress(value=b["remaining_epsilon"], min=0.0, max=b["epsilon"] or 1.0,
                              description=name[:20], bar_style="success" if b["remaining_epsilon"]
                              > 0.25 * b["epsilon"] else "warning" if b["remaining_epsilon"] > 0
                              else "danger")
        rows.append(w.HBox([bar, w.Label(f"ε {b['remaining_epsilon']:g} of {b['epsilon']:g} left, "
                                         f"{b['queries']} queries")]))
    box = w.VBox(rows)
    box.add_class("keepbook-budget-widget")
    return box
