"""The OpenAPI document at `/openapi.json`: every route, its request and error schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver.ops import DeadLetterAction, NoteResolutionRequest, NotesQuery
from services.webhook_receiver.responses import JSONResponse
from shared.connections import (
    ConnectionRequest,
    EditRequest,
    EnableRequest,
    PractitionerRequest,
    PractitionerRotation,
    RotateRequest,
)
from shared.halaxy import HALAXY_EVENTS
from shared.notes import ProgramCallback
from shared.ops import OffboardRequest


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable reason")
    detail: str = Field(description="a sentence for a person")


class Accepted(BaseModel):
    accepted: list[str] = Field(description="event (or note) ids queued by this delivery")
    duplicates: list[str] = Field(description="ids seen before and not queued again")


NOTIFICATION_BUNDLE: dict[str, Any] = {
    "type": "object",
    "description": (
        "Halaxy's notification: a FHIR history Bundle of SubscriptionStatus entries whose "
        "notificationEvent[].focus references the changed resource (unknown fields allowed)."
    ),
    "required": ["resourceType", "entry"],
    "properties": {
        "resourceType": {"const": "Bundle"},
        "type": {"type": "string", "example": "history"},
        "timestamp": {"type": "string"},
        "entry": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "fullUrl": {"type": "string"},
                    "resource": {
                        "type": "object",
                        "required": ["resourceType"],
                        "properties": {
                            "resourceType": {"const": "SubscriptionStatus"},
                            "type": {"type": "string", "example": "event-notification"},
                            "subscription": {"$ref": "#/components/schemas/Reference"},
                            "eventsSinceSubscriptionStart": {"type": "string"},
                            "notificationEvent": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["focus"],
                                    "properties": {
                                        "id": {"type": "string"},
                                        "eventNumber": {"type": "string"},
                                        "timestamp": {"type": "string"},
                                        "focus": {"$ref": "#/components/schemas/Reference"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}

REFERENCE = {
    "type": "object",
    "required": ["reference"],
    "properties": {"reference": {"type": "string"}, "type": {"type": "string"}},
}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "malformed request (not JSON, bad Content-Length)",
        401: "missing or wrong credentials; for an admin token: missing, unknown, revoked or "
        "expired (the detail says which)",
        403: "the admin's role does not allow this (the detail names the role needed); or a "
        "console form refused: its CSRF token is missing, forged or expired, or another site "
        "sent it (application/x-www-form-urlencoded posts only)",
        404: "unknown connection, event, note, practitioner or route",
        409: "what it would change changed meanwhile (connection_changed, note_state_changed): "
        "look at it again and retry; or another connection already uses these credentials "
        "(already_connected, naming it)",
        413: "body too large",
        415: "body is not JSON",
        422: "well-formed but not acceptable",
        503: "cannot queue right now; see Retry-After",
    }
    return {
        str(status): {
            "description": reasons[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
        for status in statuses
    }


def _query(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A flat model's fields as optional query parameters, with their schemas."""
    return [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in model.model_json_schema()["properties"].items()
    ]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _json_or_page(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """JSON, or for a browser (Accept: text/html) the same answer as a page."""
    return {
        "description": description,
        "content": {
            "application/json": {"schema": schema},
            "text/html": {"schema": {"type": "string"}},
        },
    }


EVENT_SEARCH_PARAMETERS = [
    ("connection", "a connection id, or `unrouted`"),
    (
        "state",
        "queued, retrying, done, skipped-unchanged, skipped, dead, parked, failed, "
        "dropped, unrouted, routed, held",
    ),
    ("event", "an event id (a Halaxy event's, or a program's note id)"),
    ("resource", "a Halaxy resource id (a program's: the patient's)"),
    ("since", "received at or after: ISO 8601 with offset, or a duration back (30m, 24h, 7d)"),
    ("until", "received at or before: the same forms"),
    ("limit", "1 to 200 (50)"),
    ("cursor", "the next_cursor of the page before"),
]
EVENT_RECORD = {
    "type": "object",
    "required": ["event_id", "connection_id", "state", "received_at", "attempts"],
    "properties": {
        "event_id": {"type": "string"},
        "connection_id": {"type": "string"},
        "state": {"type": "string"},
        "received_at": {"type": "string"},
        "dead_letter_id": {"type": ["string", "null"]},
        "attempts": {"type": "array", "items": {"type": "object"}},
    },
}
EVENT_PAGE = {
    "type": "object",
    "required": ["events", "next_cursor", "scanned", "complete"],
    "properties": {
        "events": {"type": "array", "items": EVENT_RECORD},
        "next_cursor": {"type": ["string", "null"]},
        "scanned": {"type": "integer", "minimum": 0},
        "complete": {"type": "boolean"},
    },
}
EVENT_RECORDS = {
    "type": "object",
    "required": ["event_id", "records"],
    "properties": {
        "event_id": {"type": "string"},
        "records": {"type": "array", "minItems": 1, "items": EVENT_RECORD},
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


NOTES_PAGE = {
    "type": "object",
    "required": ["notes", "total", "offset", "limit"],
    "properties": {
        "notes": {"type": "array", "items": {"type": "object"}},
        "total": {"type": "integer", "minimum": 0, "description": "in the list, all pages"},
        "offset": {"type": "integer", "minimum": 0},
        "limit": {"type": "integer", "minimum": 1},
    },
}

CONNECTION_ID = {
    "name": "connection_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
HALAXY_PRACTITIONER = {
    "name": "halaxy_practitioner",
    "in": "path",
    "required": True,
    "description": "the practitioner's Halaxy practice role, PR-…",
    "schema": {"type": "string"},
}
PRACTITIONERS = {
    "type": "object",
    "required": ["connection_id", "practitioners"],
    "properties": {
        "connection_id": {"type": "string"},
        "practitioners": {
            "type": "array",
            "items": {
                "type": "object",
                "description": "no secret: the token shows its last four characters only",
                "required": [
                    "halaxy_practitioner",
                    "token_ends_with",
                    "auth",
                    "pms_name",
                    "default",
                    "added_at",
                    "rotated_at",
                ],
                "properties": {
                    "halaxy_practitioner": {"type": "string"},
                    "token_ends_with": {"type": "string", "maxLength": 4},
                    "auth": {"enum": ["api_key", "pms"]},
                    "pms_name": {"type": ["string", "null"]},
                    "default": {"type": "boolean"},
                    "added_at": {"type": "string"},
                    "rotated_at": {"type": ["string", "null"]},
                },
            },
        },
    },
}
ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminToken": []}]
# The /ops page: the admin token as Bearer, or as the Basic password (what a browser can send).
PAGE_SECURITY: list[dict[str, list[str]]] = [{"adminToken": []}, {"adminBasic": []}]
# The console's forms post to these API routes too (form-urlencoded, with a CSRF token):
# services/webhook_receiver/forms.py. The JSON API answers 403 only for a role too low
# (`with_roles` adds it to every operation above viewer).
FORM_REFUSAL = {"replay": (403,), "purge": ()}
# A letter named by id that is not there (replayed or purged already, or never dead).
LETTER_NOT_FOUND = (404,)
ANY_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}


def build_spec() -> dict[str, Any]:
    schemas: dict[str, Any] = {"NotificationBundle": NOTIFICATION_BUNDLE, "Reference": REFERENCE}
    for model in (
        ErrorBody,
        Accepted,
        ConnectionRequest,
        RotateRequest,
        PractitionerRequest,
        PractitionerRotation,
        ProgramCallback,
        DeadLetterAction,
        NoteResolutionRequest,
    ):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    admin_errors = _errors(401, 503)
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "halaxy-bridge receiver", "version": "1"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "halaxySecret": {"type": "apiKey", "in": "header", "name": "Authorization"},
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a named admin's token (halaxy-bridge admins add), or "
                    "BRIDGE_ADMIN_TOKEN (the bootstrap admin, role admin); each operation's "
                    "x-role is the least role it needs: viewer < operator < admin",
                },
                "adminBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "any user name; the password is an admin token",
                },
            },
        },
        "paths": {
            "/webhooks/halaxy/{connection_id}/{event}": {
                "post": {
                    "summary": "Halaxy notification webhook (one URL per event)",
                    "security": [{"halaxySecret": []}],
                    "parameters": [
                        CONNECTION_ID,
                        {
                            "name": "event",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": list(HALAXY_EVENTS)},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": _ref("NotificationBundle")},
                            "application/fhir+json": {"schema": _ref("NotificationBundle")},
                        },
                    },
                    "responses": {
                        "202": _json(_ref("Accepted"), "queued durably"),
                        **_errors(400, 401, 404, 413, 415, 422, 503),
                    },
                }
            },
            "/webhooks/programs/{connection_id}": {
                "post": {
                    "summary": "the therapy platform's program-assigned (PDF) callback",
                    "description": (
                        "Physitrack's PDF-webhook body; api_key authenticates. When the "
                        "connection has a signing secret, Standard Webhooks headers are "
                        "required too."
                    ),
                    "parameters": [
                        CONNECTION_ID,
                        *(
                            {
                                "name": name,
                                "in": "header",
                                "required": False,
                                "schema": {"type": "string"},
                            }
                            for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
                        ),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ProgramCallback")}},
                    },
                    "responses": {
                        "202": _json(_ref("Accepted"), "the note is recorded and queued"),
                        **_errors(400, 401, 404, 413, 415, 422, 503),
                    },
                }
            },
            "/webhooks/physitrack/programs": {
                "post": {
                    "summary": "Physitrack's program PDF webhook: one URL for the deployment",
                    "description": (
                        "Physitrack's PDF-webhook body (therapy-platforms.md 2.1). api_key must "
                        "be one of BRIDGE_PHYSITRACK_WEBHOOK_KEYS; token routes the post to the "
                        "practitioner's connection. 200 with an empty body once the post is "
                        "durable: its note queued, or, when no enabled connection knows the "
                        "token, kept as an unrouted program for ops. 404 while no key is set."
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ProgramCallback")}},
                    },
                    "responses": {
                        "200": {"description": "taken: queued, or kept as unrouted"},
                        **_errors(400, 401, 404, 413, 415, 422, 503),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "the process is alive",
                    "responses": {"200": _json(ANY_OBJECT, "alive")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Redis reachable; warnings if it could lose queued work",
                    "responses": {"200": _json(ANY_OBJECT, "ready"), **_errors(503)},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "description": "Any admin token (viewer or above); none needed when "
                    "BRIDGE_METRICS_PUBLIC=true.",
                    "security": [*ADMIN_SECURITY, {}],
                    "x-role": "viewer",
                    "responses": {
                        "200": {
                            "description": "text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(401, 503),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "this document",
                    "responses": {"200": _json(ANY_OBJECT, "the OpenAPI document")},
                }
            },
            "/admin/connections": {
                "get": {
                    "summary": "list connections (no secrets)",
                    "security": ADMIN_SECURITY,
                    "responses": {"200": _json(ANY_OBJECT, "connections"), **admin_errors},
                },
                "post": {
                    "summary": "add a connection; answers with the setup values",
                    "security": ADMIN_SECURITY,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ConnectionRequest")}},
                    },
                    "responses": {
                        "201": _json(ANY_OBJECT, "created, with setup values"),
                        **_errors(400, 401, 409, 413, 415, 422, 503),
                    },
                },
            },
            "/admin/connections/{connection_id}": {
                "get": {
                    "summary": "show a connection (no secrets)",
                    "security": ADMIN_SECURITY,
                    "parameters": [CONNECTION_ID],
                    "responses": {
                        "200": _json(ANY_OBJECT, "the connection"),
                        **_errors(401, 404, 503),
                    },
                }
            },
            "/admin/connections/{connection_id}/disable": {
                "post": {
                    "summary": "disable a connection: its webhooks get 404",
                    "security": ADMIN_SECURITY,
                    "parameters": [CONNECTION_ID],
                    "responses": {
                        "200": _json(ANY_OBJECT, "disabled"),
                        **_errors(401, 404, 409, 503),
                    },
                }
            },
            "/admin/connections/{connection_id}/practitioners": {
                "get": {
                    "summary": "a Physitrack connection's practitioners (no secrets)",
                    "security": ADMIN_SECURITY,
                    "parameters": [CONNECTION_ID],
                    "responses": {
                        "200": _json(PRACTITIONERS, "the practitioners"),
                        **_errors(401, 404, 503),
                    },
                },
                "post": {
                    "summary": "add a practitioner; their key is checked against Physitrack "
                    "unless verify is false (audited)",
                    "security": ADMIN_SECURITY,
                    "parameters": [CONNECTION_ID],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("PractitionerRequest")}},
                    },
                    "responses": {
                        "201": _json(PRACTITIONERS, "added; the connection's practitioners"),
                        **_errors(400, 401, 404, 409, 413, 415, 422, 503),
                    },
                },
            },
            "/admin/connections/{connection_id}/practitioners/{halaxy_practitioner}/rotate": {
                "post": {
                    "summary": "replace a practitioner's token or keys (a new key is checked), "
                    "or their default (audited)",
                    "security": ADMIN_SECURITY,
                    "parameters": [CONNECTION_ID, HALAXY_PRACTITIONER],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("PractitionerRotation")}},
                    },
                    "responses": {
                        "200": _json(PRACTITIONERS, "rotated; the connection's practitioners"),
                        **_errors(400, 401, 404, 409, 413, 415, 422, 503),
                    },
                }
            },
            "/admin/connections/{connection_id}/practitioners/{halaxy_practitioner}": {
                "delete": {
                    "summary": "remove a practitioner: program posts with their token are no "
                    "longer this connection's (audited)",
                    "security": ADMIN_SECURITY,
                    "parameters": [CONNECTION_ID, HALAXY_PRACTITIONER],
                    "responses": {
                        "200": _json(PRACTITIONERS, "removed; the connection's practitioners"),
                        **_errors(401, 404, 409, 503),
                    },
                }
            },
            "/ops": {
                "get": {
                    "summary": "the status as a read-only HTML page that refreshes every 10 s",
                    "security": PAGE_SECURITY,
                    "responses": {
                        "200": {
                            "description": "the page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        },
                        **_errors(401, 503),
                    },
                }
            },
            "/ops/status": {
                "get": {
                    "summary": "queues, connections (last sweep, queued messages), dead letters, "
                    "parked notes, workers and schedulers alive",
                    "security": ADMIN_SECURITY,
                    "responses": {"200": _json(ANY_OBJECT, "status"), **_errors(401, 503)},
                }
            },
            "/ops/dead-letters": {
                "get": {
                    "summary": "dead letters (kept 30 days), filtered",
                    "security": ADMIN_SECURITY,
                    "parameters": [
                        {
                            "name": name,
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                        }
                        for name in ("connection", "since", "reason")
                    ],
                    "responses": {
                        "200": _json(ANY_OBJECT, "dead letters"),
                        **_errors(401, 422, 503),
                    },
                }
            },
            **{
                f"/ops/dead-letters/{verb}": {
                    "post": {
                        "summary": f"{verb} dead letters by id or all matching (audited)",
                        "security": ADMIN_SECURITY,
                        "requestBody": {
                            "required": True,
                            "content": {"application/json": {"schema": _ref("DeadLetterAction")}},
                        },
                        "responses": {
                            "200": _json(ANY_OBJECT, f"{verb}ed"),
                            **_errors(
                                400, 401, *FORM_REFUSAL[verb], *LETTER_NOT_FOUND, 413, 415, 422, 503
                            ),
                        },
                    }
                }
                for verb in ("replay", "purge")
            },
            **{
                f"/ops/notes/{state}": {
                    "get": {
                        "summary": f"{state} notes, oldest first: ids, title, times, reason; "
                        "no patient details; `total` counts them all",
                        "security": ADMIN_SECURITY,
                        "parameters": _query(NotesQuery),
                        "responses": {
                            "200": _json(NOTES_PAGE, f"{state} notes"),
                            **_errors(401, 422, 503),
                        },
                    }
                }
                for state in ("parked", "failed")
            },
            "/ops/notes/{note_id}/resolve": {
                "post": {
                    "summary": "settle a parked or failed note: posted, retry or drop (audited)",
                    "security": ADMIN_SECURITY,
                    "parameters": [
                        {
                            "name": "note_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("NoteResolutionRequest")}},
                    },
                    "responses": {
                        "200": _json(ANY_OBJECT, "the settled note"),
                        **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                    },
                }
            },
            "/ops/events": {
                "get": {
                    "summary": "the per-event delivery log, newest first, paged by cursor; a "
                    "browser (Accept: text/html) gets the search page",
                    "security": PAGE_SECURITY,
                    "parameters": [
                        {
                            "name": name,
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": description,
                        }
                        for name, description in EVENT_SEARCH_PARAMETERS
                    ],
                    "responses": {
                        "200": _json_or_page(EVENT_PAGE, "the events that match"),
                        **_errors(401, 422, 503),
                    },
                }
            },
            "/ops/events/{event_id}": {
                "get": {
                    "summary": "one event's records (one per connection that logged the id) "
                    "with every attempt; a browser gets the event's page",
                    "security": PAGE_SECURITY,
                    "parameters": [
                        {
                            "name": "event_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "connection",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": _json_or_page(EVENT_RECORDS, "the event's records"),
                        **_errors(401, 404, 422, 503),
                    },
                }
            },
            "/ops/programs/unrouted": {
                "get": {
                    "summary": "Physitrack program posts no enabled connection knows the token "
                    "of, oldest first: ids and times, never the token, link or program name",
                    "security": ADMIN_SECURITY,
                    "responses": {
                        "200": _json(ANY_OBJECT, "unrouted program posts"),
                        **_errors(401, 503),
                    },
                }
            },
            "/admin/connections/{connection_id}/rotate": {
                "post": {
                    "summary": "rotate secrets; old generated secrets stay valid for grace_hours",
                    "security": ADMIN_SECURITY,
                    "parameters": [CONNECTION_ID],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("RotateRequest")}},
                    },
                    "responses": {
                        "200": _json(ANY_OBJECT, "rotated, with setup values"),
                        **_errors(400, 401, 404, 409, 413, 415, 422, 503),
                    },
                }
            },
        },
    }
    _add_lifecycle(spec)
    return spec


def _add_lifecycle(spec: dict[str, Any]) -> None:
    """The connection's lifecycle after create: enable, edit, pause, resume, offboard."""
    schemas = spec["components"]["schemas"]
    for model in (EditRequest, EnableRequest, OffboardRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    paths = spec["paths"]
    paths["/admin/connections/{connection_id}"]["patch"] = {
        "summary": "edit the name, practitioner map, author, PDF hosts or platform base URL "
        "(a JSON merge patch: null clears the author, restores the default PDF hosts, or "
        "removes a practitioner token); the id and webhook URLs stay (audited)",
        "security": ADMIN_SECURITY,
        "parameters": [CONNECTION_ID],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("EditRequest")}},
        },
        "responses": {
            "200": _json(ANY_OBJECT, "edited: the connection, and `changed` (field names)"),
            **_errors(400, 401, 404, 409, 413, 415, 422, 503),
        },
    }
    paths["/admin/connections/{connection_id}/enable"] = {
        "post": {
            "summary": "enable a disabled connection again, same id, URLs and secrets; refused "
            "if another enabled connection took its credentials meanwhile (audited)",
            "security": ADMIN_SECURITY,
            "parameters": [CONNECTION_ID],
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": _ref("EnableRequest")}},
            },
            "responses": {
                "200": _json(ANY_OBJECT, "enabled: the connection"),
                **_errors(400, 401, 404, 409, 413, 415, 422, 503),
            },
        }
    }
    for verb, summary in (
        ("pause", "pause: webhooks are still taken and kept, nothing is processed (audited)"),
        ("resume", "resume: what was held is processed first, in order, then new work (audited)"),
    ):
        paths[f"/admin/connections/{{connection_id}}/{verb}"] = {
            "post": {
                "summary": summary,
                "security": ADMIN_SECURITY,
                "parameters": [CONNECTION_ID],
                "responses": {
                    "200": _json(ANY_OBJECT, "the connection, paused and held_messages"),
                    **_errors(401, 404, 503),
                },
            }
        }
    paths["/admin/connections/{connection_id}/test-event"] = {
        "post": {
            "summary": "send a test event through the connection: logged like a delivery, then "
            "a worker reads from Halaxy and the platform (nothing written); its trail is at "
            "`event_url` (audited)",
            "security": ADMIN_SECURITY,
            "parameters": [CONNECTION_ID],
            "responses": {
                "202": _json(ANY_OBJECT, "queued: `event_id` and `event_url`"),
                **_errors(401, 404, 503),
            },
        }
    }
    paths["/admin/connections/{connection_id}/offboard"] = {
        "post": {
            "summary": "erase everything the bridge holds for the clinic; the body confirms "
            "it with the connection id; one audit record of the erasure is left",
            "security": ADMIN_SECURITY,
            "parameters": [CONNECTION_ID],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("OffboardRequest")}},
            },
            "responses": {
                "200": _json(ANY_OBJECT, "offboarded: what was erased, and how much"),
                **_errors(400, 401, 404, 409, 413, 415, 422, 503),
            },
        }
    }


# The least role each admin operation needs (`auth.authorize` in its handler): viewer for
# every read, unless listed here.
ROLES = {
    ("post", "/admin/connections"): "admin",
    ("post", "/admin/connections/{connection_id}/disable"): "operator",
    ("post", "/admin/connections/{connection_id}/enable"): "operator",
    ("post", "/admin/connections/{connection_id}/test-event"): "operator",
    ("post", "/admin/connections/{connection_id}/pause"): "operator",
    ("post", "/admin/connections/{connection_id}/resume"): "operator",
    ("patch", "/admin/connections/{connection_id}"): "admin",
    ("post", "/admin/connections/{connection_id}/offboard"): "admin",
    ("post", "/admin/connections/{connection_id}/rotate"): "admin",
    ("post", "/admin/connections/{connection_id}/practitioners"): "admin",
    ("post", "/admin/connections/{connection_id}/practitioners/{halaxy_practitioner}/rotate"): (
        "admin"
    ),
    ("delete", "/admin/connections/{connection_id}/practitioners/{halaxy_practitioner}"): "admin",
    ("post", "/ops/dead-letters/replay"): "operator",
    ("post", "/ops/dead-letters/purge"): "operator",
    ("post", "/ops/notes/{note_id}/resolve"): "operator",
}


def with_roles(spec: dict[str, Any]) -> dict[str, Any]:
    """Each operation behind an admin token gets its `x-role`, and a 403 when that is above
    viewer (a viewer is refused it)."""
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if operation.get("security") not in (ADMIN_SECURITY, PAGE_SECURITY):
                continue
            role = ROLES.get((method, path), "viewer")
            operation["x-role"] = role
            if role != "viewer":
                operation["responses"].update(_errors(403))
    return spec


SPEC = with_roles(build_spec())


async def openapi(request: Request) -> Response:
    return JSONResponse(SPEC)
