"""The console's pages and actions for what waits for a person: dead letters and notes.

At the JSON API's own URLs (`forms.negotiated`): `GET /ops/dead-letters` and
`GET /ops/notes/parked|failed` give a browser a table with a form per row; a form post to
`POST /ops/dead-letters/replay` replays one letter at once, or, after a confirmation page, a
filtered set; a form post to `POST /ops/notes/{note_id}/resolve` settles a note as posted (with
its DocumentReference id), not posted (dropped, after a confirmation) or to retry (a parked
note only after a confirmation: it may be in Halaxy already). JSON clients get what they got.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver import ops
from services.webhook_receiver.admin import authorize, call
from services.webhook_receiver.deps import Deps
from services.webhook_receiver.forms import (
    Form,
    FormSigner,
    actor_of,
    form_action,
    form_signer,
    negotiated,
)
from services.webhook_receiver.pages import (
    Markup,
    confirmation_page,
    join,
    link,
    page,
    post_form,
    result_page,
    table,
    tag,
    text_input,
    url,
)
from services.webhook_receiver.responses import ApiError
from shared.connections import Connection
from shared.infra import Keys, utcnow, validated
from shared.notes import (
    NoteNotWaiting,
    NoteOutbox,
    NoteRecord,
    NotesPage,
    NoteState,
    NoteStateConflict,
    Resolution,
    Waiting,
    find_waiting,
    resolve_note,
)
from shared.ops import DeadLetter, DeadLetterStore, Role
from shared.ops import replay as replaying

Handler = Callable[[Request], Awaitable[Response]]

REPLAY_PATH = "/ops/dead-letters/replay"
LETTERS_PATH = "/ops/dead-letters"
# At most this many letters in one confirmed replay (the JSON API takes 1000 ids a call): the
# confirmation lists each, and the form carries them back.
REPLAY_BATCH = 500
SHOWN_LETTERS = 500  # rows on the page; the count above it is of all that match


def _keys(deps: Deps) -> Keys:
    return Keys(deps.settings.redis_namespace)


def _letters(deps: Deps) -> DeadLetterStore:
    return DeadLetterStore(deps.redis, _keys(deps))


def _outbox(deps: Deps) -> NoteOutbox:
    return NoteOutbox(deps.redis, _keys(deps), deps.settings.fernet)


async def _names(deps: Deps) -> dict[str, str]:
    found: list[Connection] = await call(deps.connections.list)
    return {connection.id: connection.name for connection in found}


def _connection(names: dict[str, str], connection_id: str) -> str:
    name = names.get(connection_id)
    return f"{name} ({connection_id})" if name else connection_id


# --- Dead letters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The dead-letter list's filters as a GET form or a replay form gives them ("" = none)."""

    connection: str | None = None
    since: str | None = None
    reason: str | None = None

    @classmethod
    def of(cls, get: Callable[[str], str | None]) -> Filters:
        def given(name: str) -> str | None:
            value = get(name)
            return value.strip() if value and value.strip() else None

        return cls(given("connection"), given("since"), given("reason"))

    def fields(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v is not None}

    def said(self) -> str:
        shown = [f"{k} {v}" for k, v in self.fields().items()]
        return "matching " + ", ".join(shown) if shown else "(no filter: all of them)"


def _matching(deps: Deps, filters: Filters) -> list[DeadLetter]:
    action = validated(
        ops.DeadLetterAction, {"all_matching": True, **filters.fields()}, "the filters are invalid"
    )
    return replaying.select(
        _letters(deps),
        [],
        action.connection,
        replaying.parse_since(action.since, utcnow()),
        action.reason,
        True,
    )


async def dead_letters_page(request: Request) -> Response:
    deps = authorize(request, Role.VIEWER, browser=True)
    filters = Filters.of(request.query_params.get)
    letters: list[DeadLetter] = await call(_matching, deps, filters)
    names = await _names(deps)
    signer = form_signer(request, deps)
    rows = [
        [
            letter.id,
            _connection(names, letter.connection_id),
            letter.event,
            f"{letter.actor}: {letter.resource_id}",
            letter.error_class,
            letter.reason,
            str(letter.attempts),
            tag("time", letter.failed_at),
            post_form(signer, REPLAY_PATH, "Replay", {"ids": letter.id}),
        ]
        for letter in letters[::-1][:SHOWN_LETTERS]  # the newest first
    ]
    count = len(letters)
    summary = f"{_letters_said(count)} {filters.said()}."
    if count > SHOWN_LETTERS:
        summary += f" The newest {SHOWN_LETTERS} are shown."
    replay_all: object = ""
    if count:
        replay_all = post_form(
            signer,
            REPLAY_PATH,
            f"Replay all {count} matching…",
            {"all_matching": "yes", **filters.fields()},
            button_name="replay_all",
        )
    body = join(
        [
            _filter_form(filters, names),
            tag("p", summary, id="summary"),
            replay_all,
            table("dead-letters", LETTER_COLUMNS, rows, empty="no dead letter"),
            tag(
                "p",
                "Replay queues the letter's job again as bulk work (jobs are idempotent) and "
                "takes it off this list; if it fails again it comes back here.",
            ),
        ]
    )
    return page("Dead letters", body)


LETTER_COLUMNS = [
    "id",
    "connection",
    "event",
    "job",
    "error",
    "reason",
    "attempts",
    "failed at",
    "action",
]


def _letters_said(count: int) -> str:
    return f"{count} dead letter{'' if count == 1 else 's'}"


def _filter_form(filters: Filters, names: dict[str, str]) -> Markup:
    choices = [tag("option", "any connection", value="")]
    known = sorted(names.items(), key=lambda item: item[1].lower())
    if filters.connection and filters.connection not in names:
        known.append((filters.connection, "unknown"))
    for connection_id, name in known:
        selected = "selected" if connection_id == filters.connection else None
        choices.append(
            tag("option", f"{name} ({connection_id})", value=connection_id, selected=selected)
        )
    fields = join(
        [
            tag("label", join(["Connection ", tag("select", join(choices), name="connection")])),
            text_input("since", "Since", filters.since, placeholder="24h, 7d or an ISO time"),
            text_input("reason", "Reason contains", filters.reason),
            tag("button", "Filter", type="submit"),
            Markup(" "),
            link(LETTERS_PATH, "clear"),
        ]
    )
    return tag("form", fields, method="get", action=LETTERS_PATH, class_="filters")


async def replay_form(request: Request, deps: Deps, form: Form) -> Response:
    """One letter: replayed at once (a replay is safe: the jobs are idempotent, and a letter
    that fails again comes back). All that match filters, or several ids: a confirmation page
    listing them first; then those confirmed that are still dead."""
    ids = form.getlist("ids")
    filters = Filters.of(form.get)
    if form.get("all_matching") == "yes":
        if ids:
            raise ApiError(422, "invalid", "give dead-letter ids or all matching, not both")
        letters: list[DeadLetter] = await call(_matching, deps, filters)
        if not letters:
            raise ApiError(
                404, "no_dead_letters", f"no dead letter {filters.said()}: nothing to replay"
            )
        return _confirm_replay(request, deps, letters, filters)
    if not ids:
        raise ApiError(422, "invalid", "choose the dead letters to replay")
    if len(ids) > REPLAY_BATCH:
        raise ApiError(422, "invalid", f"at most {REPLAY_BATCH} dead letters at a time")
    if len(ids) > 1 and not form.confirmed():
        found: list[DeadLetter] = await call(_found, deps, ids)
        if not found:
            raise _not_dead(ids)
        return _confirm_replay(request, deps, found, filters)
    replayed, gone = await call(_replay, deps, ids, actor_of(request))
    if not replayed:
        raise _not_dead(gone)
    done = [
        f"Replayed {_letters_said(len(replayed))}, queued again as bulk work: "
        + ", ".join(replayed)
    ]
    if gone:
        done.append(
            f"{len(gone)} no longer dead (replayed or purged meanwhile), left alone: "
            + ", ".join(gone)
        )
    return result_page("Replayed", done, _back_links(filters))


def _back_links(filters: Filters) -> list[tuple[str, str]]:
    return [
        (url(LETTERS_PATH, **filters.fields()), "Back to the dead letters"),
        ("/ops", "Status"),
    ]


def _not_dead(ids: Sequence[str]) -> ApiError:
    return ApiError(
        404,
        "not_dead_letter",
        f"not a dead letter: {', '.join(ids)} (replayed or purged already, or never dead); "
        "nothing was replayed",
    )


def _found(deps: Deps, ids: list[str]) -> list[DeadLetter]:
    store = _letters(deps)
    return [letter for i in dict.fromkeys(ids) if (letter := store.get(i)) is not None]


def _replay(deps: Deps, ids: list[str], by: str) -> tuple[list[str], list[str]]:
    """Replay those of `ids` still dead: (replayed, gone). Two people replaying the same letter
    at once may both queue its job: the jobs are idempotent."""
    store = _letters(deps)
    found = [(letter_id, store.get(letter_id)) for letter_id in dict.fromkeys(ids)]
    letters = [letter for _, letter in found if letter is not None]
    gone = [letter_id for letter_id, letter in found if letter is None]
    replayed = replaying.replay(store, deps.queue, deps.audit, letters, by, deps.events)
    return replayed, gone


def _confirm_replay(
    request: Request, deps: Deps, letters: list[DeadLetter], filters: Filters
) -> Response:
    batch = letters[:REPLAY_BATCH]
    listed = join(
        tag("li", f"{x.id}: {x.connection_id}, {x.actor} {x.resource_id}, {x.error_class}")
        for x in batch
    )
    happens: list[object] = [
        join(
            [
                f"{_letters_said(len(batch))} {filters.said()} will be queued again as bulk "
                "work and leave the dead-letter list:",
                tag("ul", listed, id="replay-ids"),
            ]
        )
    ]
    if len(letters) > len(batch):
        happens.append(
            f"{len(letters)} match: these are the oldest {len(batch)}; replay again for the rest."
        )
    happens.append("A letter replayed or purged meanwhile is left alone.")
    return confirmation_page(
        form_signer(request, deps),
        title=f"Replay {_letters_said(len(batch))}?",
        happens=happens,
        action=REPLAY_PATH,
        fields={"ids": [letter.id for letter in batch], **filters.fields()},
        button=f"Replay these {len(batch)}",
        back=_back_links(filters)[0][0],
    )


# --- Notes ----------------------------------------------------------------------------------


def _resolve_path(note_id: str) -> str:
    return f"/ops/notes/{note_id}/resolve"


def notes_page(state: NoteState) -> Handler:
    """`GET /ops/notes/parked|failed` for a browser: a page of notes with their resolve forms."""
    waiting = Waiting(state.value)

    async def list_notes(request: Request) -> Response:
        deps = authorize(request, Role.VIEWER, browser=True)
        asked: ops.NotesQuery = await call(
            validated, ops.NotesQuery, dict(request.query_params), "the notes query is invalid"
        )
        found: NotesPage = await call(
            partial(_outbox(deps).page, state, offset=asked.offset, limit=asked.limit)
        )
        names = await _names(deps)
        signer = form_signer(request, deps)
        rows = [
            [
                note.note_id,
                _connection(names, note.connection_id),
                note.patient_id,
                note.title,
                str(note.attempts),
                note.reason,
                tag("time", note.updated_at),
                _resolve_forms(signer, note, waiting),
            ]
            for note in found.notes
        ]
        first = asked.offset + 1 if found.notes else 0
        summary = (
            f"{found.total} {state.value} note{'s' if found.total != 1 else ''}; "
            f"showing {first} to {asked.offset + len(found.notes)}."
        )
        body = join(
            [
                tag("p", summary, id="summary"),
                tag("p", EXPLAINED[waiting]),
                table(
                    f"{state.value}-notes",
                    [
                        "note",
                        "connection",
                        "Halaxy patient",
                        "title",
                        "attempts",
                        "reason",
                        "updated",
                        "resolve",
                    ],
                    rows,
                    empty=f"no {state.value} note",
                ),
                _paging(request.url.path, asked, found),
            ]
        )
        return page(f"{state.value.capitalize()} notes", body)

    return list_notes


EXPLAINED = {
    Waiting.PARKED: (
        "Parked: the note's POST to Halaxy ended without a clear answer, so it may be in "
        "Halaxy or not. Look in the patient's clinical notes in Halaxy, then: Posted (it is "
        "there: give its DocumentReference id), Not posted (drop it), or Retry (it is not "
        "there: post it again)."
    ),
    Waiting.FAILED: (
        "Failed: Halaxy or the PDF host refused the note, so nothing was written. Fix the "
        "cause, then Retry; or drop it (Not posted); or record it as Posted if a person "
        "added it by hand."
    ),
}


def _resolve_forms(signer: FormSigner, note: NoteRecord, waiting: Waiting) -> Markup:
    action = _resolve_path(note.note_id)
    state = {"state": waiting.value}
    docref = Markup(
        '<input type="text" name="docref_id" required size="12" '
        'pattern="[A-Za-z0-9\\-.]{1,64}" placeholder="DocumentReference id" '
        'aria-label="DocumentReference id">'
    )
    parts = [
        post_form(signer, action, "Posted", {**state, "resolution": "posted"}, inputs=docref),
        post_form(signer, action, "Not posted (drop)…", {**state, "resolution": "drop"}),
        post_form(
            signer,
            action,
            "Retry…" if waiting is Waiting.PARKED else "Retry",
            {**state, "resolution": "retry"},
        ),
    ]
    return join(parts)


def _paging(path: str, asked: ops.NotesQuery, found: NotesPage) -> Markup:
    links = []
    if asked.offset > 0:
        before = str(max(0, asked.offset - asked.limit))
        links.append(link(path, "← earlier", offset=before, limit=str(asked.limit)))
    if asked.offset + len(found.notes) < found.total:
        after = str(asked.offset + asked.limit)
        links.append(link(path, "later →", offset=after, limit=str(asked.limit)))
    return tag("p", join(part + Markup(" ") for part in links), id="paging")


async def resolve_form(request: Request, deps: Deps, form: Form) -> Response:
    """Settle a note from the console. Posted: at once (the person typed the id Halaxy shows).
    Not posted (drop) and a parked note's retry: after a confirmation, since the first gives
    the note up and the second may put a second copy in the patient's record, which Halaxy
    cannot delete. A failed note's retry: at once (nothing of it is in Halaxy)."""
    note_id = request.path_params["note_id"]
    try:
        resolution = Resolution(form.get("resolution") or "")
        waiting = Waiting(form.get("state") or Waiting.PARKED.value)
    except ValueError:
        raise ApiError(
            422,
            "invalid",
            "resolution must be posted, drop or retry, and state parked or failed",
        ) from None
    docref_id = (form.get("docref_id") or "").strip() or None
    if resolution is not Resolution.POSTED:
        docref_id = None
    record: NoteRecord = await call(_waiting, deps, note_id, waiting)
    risky = resolution is Resolution.DROP or (
        resolution is Resolution.RETRY and waiting is Waiting.PARKED
    )
    names = await _names(deps)
    if risky and not form.confirmed():
        return _confirm_resolution(request, deps, record, resolution, waiting, names)
    by = actor_of(request)

    def resolve() -> NoteRecord:
        try:
            return resolve_note(
                _outbox(deps),
                deps.queue,
                record,
                resolution,
                by,
                deps.audit,
                docref_id,
                events=deps.events,
            )
        except NoteNotWaiting as exc:
            raise ApiError(404, "unknown_note", str(exc)) from None
        except NoteStateConflict as exc:
            raise ApiError(409, "note_state_changed", str(exc)) from None

    settled: NoteRecord = await call(resolve)
    done = {
        Resolution.POSTED: f"Note {note_id} is recorded as posted, as DocumentReference "
        f"{settled.docref_id}: the bridge will not post it.",
        Resolution.DROP: f"Note {note_id} is dropped: the bridge will not post it.",
        Resolution.RETRY: f"Note {note_id} is queued to be posted to Halaxy again.",
    }[resolution]
    return result_page(
        "Note settled",
        [done, f"Connection: {_connection(names, record.connection_id)}; it was {waiting}."],
        [(f"/ops/notes/{waiting}", f"Back to the {waiting} notes"), ("/ops", "Status")],
    )


def _waiting(deps: Deps, note_id: str, waiting: Waiting) -> NoteRecord:
    try:
        return find_waiting(_outbox(deps), note_id, waiting)
    except NoteNotWaiting as exc:
        raise ApiError(404, "unknown_note", str(exc)) from None
    except NoteStateConflict as exc:
        raise ApiError(409, "note_state_changed", str(exc)) from None


def _confirm_resolution(
    request: Request,
    deps: Deps,
    record: NoteRecord,
    resolution: Resolution,
    waiting: Waiting,
    names: dict[str, str],
) -> Response:
    about = (
        f"Note {record.note_id} ({record.title}) for Halaxy patient {record.patient_id} of "
        f"{_connection(names, record.connection_id)}, {waiting}"
        + (f": {record.reason}" if record.reason else "")
    )
    if resolution is Resolution.DROP:
        happens: list[object] = [
            about,
            "is marked dropped (not posted): the bridge will never post it.",
            "If it is not in Halaxy, the clinician has to send the program again.",
        ]
        title, button, warning = "Drop this note?", "Drop it (not posted)", None
    else:
        happens = [about, "is queued to be posted to Halaxy again."]
        title, button = "Post this note again?", "Post it again"
        warning = (
            "Its last POST ended without a clear answer: it may be in Halaxy already. Look in "
            "the patient's clinical notes in Halaxy first; if it is there, choose Posted with "
            "its id instead. A note posted twice cannot be deleted from Halaxy."
        )
    return confirmation_page(
        form_signer(request, deps),
        title=title,
        happens=happens,
        action=_resolve_path(record.note_id),
        fields={"resolution": resolution.value, "state": waiting.value},
        button=button,
        back=f"/ops/notes/{waiting.value}",
        warning=warning,
    )


# --- Routes: the API's URLs, negotiated -----------------------------------------------------

dead_letters = negotiated(ops.list_dead_letters, dead_letters_page)
replay_dead_letters = negotiated(ops.replay_dead_letters, form_action(replay_form))
resolve_note_route = negotiated(ops.resolve_waiting_note, form_action(resolve_form))


def notes(state: NoteState) -> Handler:
    return negotiated(ops.notes_listing(state), notes_page(state))
