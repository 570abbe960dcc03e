"""The event log as read-only HTML pages: the search (`/ops/events`) and one event
(`/ops/events/{event_id}`), for a browser; `ops_events` serves the same URLs as JSON otherwise.

In the console's chrome (`pages.document`: skip link, navigation, times in compact UTC). No
script (the pages' CSP forbids it): a search is a form sent by GET, the next page a link with
its cursor, an event's page a link from its row. Every value is escaped, attributes included;
an id in a URL is percent-encoded whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from services.webhook_receiver.pages import Markup, TokenSource, document, post_form, tag
from shared.infra import iso_now
from shared.telemetry import UNROUTED, EventPage, EventQuery, EventState, EventView

MISSING = "—"
REPLAY_PATH = "/ops/dead-letters/replay"
EXTRA_STYLE = """
form.search { display: flex; flex-wrap: wrap; gap: 0.6em 1.2em; align-items: flex-end;
  margin-bottom: 1.5em; }
form.search label { display: flex; flex-direction: column; font-weight: 600; }
form.search input, form.search select { font: inherit; padding: 0.2em 0.3em; min-width: 10em; }
form.search button { font: inherit; padding: 0.3em 1.2em; }
td.id, code { font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
td.time, time, td.word { white-space: nowrap; }
.error { border: 2px solid #a40000; padding: 0.5em 1em; color: #a40000; }
a:focus, button:focus, input:focus, select:focus { outline: 3px solid #1a5fb4; }
dl.fields { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.fields dt { font-weight: 600; }
dl.fields dd { margin: 0; }
ul.calls { margin: 0; padding-left: 1.2em; }
.state-dead, .state-parked, .state-failed, .state-retrying { color: #a40000; font-weight: 600; }
"""
STATE_MEANINGS = {
    EventState.QUEUED: "taken in (or replayed, or sent back): a worker will run it",
    EventState.RETRYING: "the last attempt failed or was deferred; it will be tried again",
    EventState.DONE: "written: patient created or updated, note posted, invoice recorded",
    EventState.SKIPPED_UNCHANGED: "nothing to write: the platform already had it",
    EventState.SKIPPED: "not written by the rules (archived, deceased, enquiry, stale...)",
    EventState.DEAD: "failed for good: its dead letter can be replayed",
    EventState.PARKED: "the note's POST ended ambiguously: check Halaxy, then resolve it",
    EventState.FAILED: "the note was refused (PDF or Halaxy): resolve it; or a test event's "
    "read failed (its attempt shows what answered what)",
    EventState.DROPPED: "its connection was disabled, or the note dropped by a person",
    EventState.UNROUTED: "a Physitrack post no enabled connection knows the token of: kept",
    EventState.ROUTED: "an unrouted post a connection has taken since: see its note",
    EventState.HELD: "its connection is paused: kept, and run once it is resumed",
    EventState.DEFERRED: "Halaxy or the platform keeps failing (circuit open): it waits, "
    "no retry counted, and runs once a probe succeeds",
}
ROW_COLUMNS = (
    "received at",
    "connection",
    "type",
    "event id",
    "resource",
    "state",
    "detail",
    "attempts",
    "dead letter",
)


def event_href(view: EventView) -> str:
    record = view.record
    query = urlencode({"connection": record.connection_id})
    return f"/ops/events/{quote(record.event_id, safe='')}?{query}"


def search_href(params: Mapping[str, str]) -> str:
    return "/ops/events" + (f"?{urlencode(params)}" if params else "")


def moment(value: str | None) -> Markup:
    """A time as the console shows one (compact UTC, never wrapping, the full ISO time in its
    `datetime` and tooltip), to the second: attempts often fall within one minute."""
    if not value:
        return Markup(MISSING)
    try:
        utc = datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:
        return Markup(escape(value))
    full = utc.isoformat(timespec="milliseconds")
    return tag("time", f"{utc:%Y-%m-%d %H:%M:%S}Z", datetime=full, title=full)


def _text(value: Any) -> str:
    return MISSING if value is None or value == "" else str(value)


def _page(title: str, body: str) -> str:
    """A console page; `body` is HTML built (and escaped) here. The page's own few rules of
    style come first in it: the console's chrome holds the rest."""
    return document(title, Markup(f"<style>{EXTRA_STYLE}</style>\n{body}"), current="/ops/events")


def _form(raw: Mapping[str, str], connections: Iterable[str]) -> str:
    def value(name: str) -> str:
        return escape(raw.get(name, ""), quote=True)

    states = "".join(
        f'<option value="{escape(s.value)}"{" selected" if raw.get("state") == s.value else ""}>'
        f"{escape(s.value)}</option>"
        for s in EventState
    )
    options = "".join(f'<option value="{escape(c, quote=True)}">' for c in connections)
    return f"""<form class="search" method="get" action="/ops/events" role="search">
<label for="f-connection">Connection
<input id="f-connection" name="connection" value="{value("connection")}" list="connections"
 autocomplete="off"></label>
<datalist id="connections">{options}</datalist>
<label for="f-state">State
<select id="f-state" name="state"><option value="">any</option>{states}</select></label>
<label for="f-event">Event id
<input id="f-event" name="event" value="{value("event")}"></label>
<label for="f-resource">Resource id
<input id="f-resource" name="resource" value="{value("resource")}"></label>
<label for="f-since">Since (ISO time or 24h)
<input id="f-since" name="since" value="{value("since")}"></label>
<label for="f-until">Until
<input id="f-until" name="until" value="{value("until")}"></label>
<label for="f-limit">Per page
<input id="f-limit" name="limit" value="{value("limit")}" inputmode="numeric" size="4"></label>
<button type="submit">Search</button>
<a href="/ops/events">Clear</a>
</form>"""


def _state(view: EventView) -> str:
    state = view.status.state.value
    return f'<span class="state-{escape(state)}">{escape(state)}</span>'


def _replay(signer: TokenSource | None, letter_id: str | None) -> str:
    """The dead letter's replay button, for whoever may act (`signer`); else nothing."""
    if signer is None or not letter_id:
        return ""
    return " " + str(post_form(signer, REPLAY_PATH, "Replay", {"ids": letter_id}))


def _row(view: EventView, signer: TokenSource | None) -> str:
    shown = view.shown()
    cells = [
        f'<td class="time">{moment(shown["received_at"])}</td>',
        f'<td class="id word">{escape(shown["connection_id"])}</td>',
        f'<td class="word">{escape(shown["event_type"])}</td>',
        f'<td class="id"><a href="{escape(event_href(view), quote=True)}">'
        f"{escape(shown['event_id'])}</a></td>",
        f'<td class="id">{escape(_text(shown["resource_id"]))}</td>',
        f'<td class="word">{_state(view)}</td>',
        f"<td>{escape(_text(shown['detail']))}</td>",
        f"<td>{len(view.attempts)}</td>",
        f'<td class="id">{escape(_text(shown["dead_letter_id"]))}'
        f"{_replay(signer, shown['dead_letter_id'])}</td>",
    ]
    return f"<tr>{''.join(cells)}</tr>"


def _legend() -> str:
    items = "".join(
        f"<dt>{escape(state.value)}</dt><dd>{escape(meaning)}</dd>"
        for state, meaning in STATE_MEANINGS.items()
    )
    return (
        f'<details><summary>What the states mean</summary><dl class="fields">{items}</dl></details>'
    )


def render_search(
    raw: Mapping[str, str],
    connections: Iterable[str],
    query: EventQuery | None,
    page: EventPage | None,
    error: list[str] | None = None,
    signer: TokenSource | None = None,
) -> str:
    """The search page: the form (filled as asked), then the results or what was wrong; a
    dead event's row has its replay button when `signer` signs the caller's forms."""
    parts = [
        "<p>Every Halaxy event and program the bridge took in over the last 30 days, newest "
        f"first. Generated at {moment(iso_now())}.</p>",
        _form(raw, connections),
        _legend(),
    ]
    if error is not None:
        problems = "".join(f"<li>{escape(p)}</li>" for p in error)
        parts.append(
            f'<div class="error" role="alert" id="search-error"><p>The search is invalid; '
            f"nothing was searched.</p><ul>{problems}</ul></div>"
        )
    if query is not None and page is not None:
        head = "".join(f'<th scope="col">{escape(c)}</th>' for c in ROW_COLUMNS)
        rows = "".join(_row(view, signer) for view in page.events) or (
            f'<tr><td colspan="{len(ROW_COLUMNS)}">no events match</td></tr>'
        )
        parts.append(
            f'<h2 id="results">Results</h2><table id="events"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )
        parts.append(_paging(query, page))
    return _page("Event log", "\n".join(parts))


def _paging(query: EventQuery, page: EventPage) -> str:
    links = []
    if query.cursor is not None:
        links.append(f'<a href="{escape(search_href(query.shown()), quote=True)}">First page</a>')
    if page.next_cursor is not None:
        href = search_href({**query.shown(), "cursor": page.next_cursor})
        links.append(
            f'<a id="next-page" rel="next" href="{escape(href, quote=True)}">Next page</a>'
        )
    note = ""
    if not page.complete:
        note = (
            f"<p>Looked at {page.scanned} entries without filling the page; the next page "
            "goes on from there.</p>"
        )
    return note + (f"<p>{' · '.join(links)}</p>" if links else "<p>End of the results.</p>")


def render_event(event_id: str, views: list[EventView], signer: TokenSource | None = None) -> str:
    """One event's page: each record of it (one per connection that logged the id); a dead
    one has its replay button when `signer` signs the caller's forms."""
    parts = []
    for view in views:
        parts.append(_record(view, signer))
    return _page(f"Event {event_id}", "\n".join(parts))


def _record(view: EventView, signer: TokenSource | None) -> str:
    shown = view.shown()
    fields = [
        ("connection", shown["connection_id"]),
        ("source", shown["source"]),
        ("type", shown["event_type"]),
        ("resource", shown["resource_id"]),
        ("note", shown["note_id"]),
        ("routed from", shown["routed_from"]),
        ("received at", shown["received_at"]),
        ("state since", shown["state_at"]),
        ("detail", shown["detail"]),
    ]
    times = {"received at", "state since"}
    items = "".join(
        f"<dt>{escape(name)}</dt><dd>{moment(value)}</dd>"
        if name in times
        else f'<dt>{escape(name)}</dt><dd class="id">{escape(_text(value))}</dd>'
        for name, value in fields
    )
    items = f"<dt>state</dt><dd>{_state(view)}</dd>" + items
    dead = ""
    if shown["dead_letter_id"]:
        dead = (
            f'<p class="dead-letter">Dead letter <code id="dead-letter-id">'
            f"{escape(shown['dead_letter_id'])}</code>: replay it with "
            f"<code>halaxy-bridge dead-letters replay {escape(shown['dead_letter_id'])}</code>."
            f"{_replay(signer, shown['dead_letter_id'])}</p>"
        )
    record = view.record
    links = [
        f'<a href="{escape(search_href({"connection": record.connection_id}), quote=True)}">'
        "This connection's events</a>"
    ]
    if record.connection_id != UNROUTED:
        page = f"/ops/connections/{quote(record.connection_id, safe='')}"
        links.append(f'<a href="{escape(page, quote=True)}">The connection\'s page</a>')
    if record.resource_id:
        params = {"connection": record.connection_id, "resource": record.resource_id}
        links.append(
            f'<a href="{escape(search_href(params), quote=True)}">Events of this resource</a>'
        )
    return (
        f'<section class="record"><h2>Connection <code>{escape(record.connection_id)}</code>'
        f'</h2><dl class="fields">{items}</dl>{dead}<h3>Attempts (oldest first)</h3>'
        f"{_attempts(shown['attempts'])}<p>{' · '.join(links)}</p></section>"
    )


def _attempts(attempts: list[dict[str, Any]]) -> str:
    columns = ("when", "outcome", "actor", "detail", "status", "seconds", "what it called")
    head = "".join(f'<th scope="col">{escape(c)}</th>' for c in columns)
    rows = []
    for attempt in attempts:
        calls = "".join(
            f"<li>{escape(call['upstream'])} {escape(call['method'])} "
            f"<code>{escape(call['route'])}</code> → "
            f"{escape('no answer' if call['status'] is None else str(call['status']))} "
            f"({call['seconds']:.3f} s)</li>"
            for call in attempt["calls"]
        )
        if attempt["calls_not_kept"]:
            calls += f"<li>and {int(attempt['calls_not_kept'])} more</li>"
        cells = [
            f'<td class="time">{moment(attempt["at"])}</td>',
            f"<td>{escape(attempt['outcome'])}</td>",
            f"<td>{escape(attempt['actor'])}</td>",
            f"<td>{escape(_text(attempt['detail']))}</td>",
            f"<td>{escape(_text(attempt['status_code']))}</td>",
            f"<td>{float(attempt['seconds']):.3f}</td>",
            f'<td><ul class="calls">{calls}</ul></td>' if calls else f"<td>{MISSING}</td>",
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    body = "".join(rows) or f'<tr><td colspan="{len(columns)}">none yet</td></tr>'
    return f'<table class="attempts"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_problem(status: int, title: str, detail: str) -> str:
    """A refusal as a page (404, 422): what was wrong, and the way back."""
    body = (
        f'<p class="error" role="alert">{escape(detail)}</p>'
        f'<p><a href="/ops/events">Search the event log</a></p>'
    )
    return _page(title, body)
