"""The OpenAPI 3 description of the admin API (served at ``/admin/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

from clawdbot_webhooks import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
}
_NOT_FOUND = {"404": {"$ref": "#/components/responses/NotFound"}}


def _param(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_LIST_PARAMS = [
    _param(
        "status",
        "Only this status.",
        {"type": "string", "enum": list(("pending", "done", "dropped", "dead"))},
    ),
    _param("since", "Created at or after: ISO 8601, epoch seconds or a duration (2h, 7d)."),
    _param(
        "q",
        "A substring of the delivery id, session key or last error "
        "(outgoing: also of the event id or type).",
    ),
    _param(
        "limit", "Page size (1-500, default 50).", {"type": "integer", "minimum": 1, "maximum": 500}
    ),
    _param("cursor", "``next_cursor`` of the previous page."),
]


def _listing(kind: str, target: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": f"List {kind} deliveries, newest first",
            "operationId": f"list_{kind}",
            "parameters": [_param(target, f"Only this {target}."), *_LIST_PARAMS],
            "responses": {"200": _json(_ref("DeliveryPage")), **_ERRORS},
        }
    }


def _show(kind: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": f"One {kind} delivery with its payload and attempts",
            "operationId": f"show_{kind}",
            "parameters": [_ID],
            "responses": {"200": _json(_ref("Delivery")), **_ERRORS, **_NOT_FOUND},
        }
    }


def _replay(kind: str, what: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": what,
            "operationId": f"replay_{kind}",
            "parameters": [_ID],
            "responses": {
                "202": _json(_ref("Replayed"), "Pending again"),
                "409": {"$ref": "#/components/responses/Conflict"},
                **_ERRORS,
                **_NOT_FOUND,
            },
        }
    }


_EVENT_PARAMS = [
    _param("type", "Only events of this type."),
    _param("session", "Only events of this session."),
    _param("causation", "Only events this delivery caused."),
    _param("since", "Stored at or after: ISO 8601, epoch seconds or a duration (2h, 7d)."),
    _param("cursor", "``next_cursor`` of the previous page."),
    _param(
        "limit", "Page size (1-500, default 50).", {"type": "integer", "minimum": 1, "maximum": 500}
    ),
]


def _event_schemas(nullable_str: dict[str, Any]) -> dict[str, Any]:
    event = {
        "id": {"type": "string"},
        "type": {"type": "string"},
        "timestamp": {"type": "string", "description": "When it was published (ISO 8601)."},
        "causation": {
            **nullable_str,
            "description": "The delivery that caused it: incoming, or outgoing for an error "
            "about an outgoing delivery.",
        },
        "source": {
            "type": "string",
            "description": "Who published it: webhook, gateway, bridge, outbox or plugin.",
        },
    }
    summary = ["id", "type", "timestamp", "session", "causation", "source"]
    return {
        "EventRef": {
            "type": "object",
            "required": ["id", "type", "timestamp", "causation", "source"],
            "properties": event,
        },
        "EventDelivery": {
            "type": "object",
            "required": ["id", "subscription", "url", "status", "attempts", "created_at"],
            "properties": {
                "id": {"type": "string"},
                "subscription": {"type": "string"},
                "url": {**nullable_str, "description": "Masked; null once unsubscribed."},
                "status": {"type": "string"},
                "attempts": {"type": "integer"},
                "last_error": nullable_str,
                "created_at": {"type": "number"},
            },
        },
        "EventSummary": {
            "type": "object",
            "required": summary,
            "properties": {**event, "session": nullable_str},
        },
        "CausedEvent": {
            "type": "object",
            "required": [*summary, "deliveries"],
            "properties": {
                **event,
                "session": nullable_str,
                "deliveries": {"type": "array", "items": _ref("EventDelivery")},
            },
        },
        "Event": {
            "type": "object",
            "required": [*summary, "deliveries", "payload"],
            "properties": {
                **event,
                "session": nullable_str,
                "deliveries": {"type": "array", "items": _ref("EventDelivery")},
                "payload": {"description": "What subscribers receive (without a template)."},
            },
        },
        "EventPage": {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": _ref("EventSummary")},
                "next_cursor": nullable_str,
            },
        },
        "SessionItem": {
            "type": "object",
            "required": ["kind", "id", "at"],
            "description": "An incoming delivery (hook, status, attempts, last_error), an "
            "event (type, causation, source) or an outgoing delivery (subscription, status, "
            "attempts, last_error, event_id, event_type, causation).",
            "properties": {
                "kind": {"type": "string", "enum": ["incoming", "event", "outgoing"]},
                "id": {"type": "string"},
                "at": {"type": "number"},
                "hook": {"type": "string"},
                "subscription": {"type": "string"},
                "status": {"type": "string"},
                "attempts": {"type": "integer"},
                "last_error": nullable_str,
                "type": {"type": "string"},
                "source": {"type": "string"},
                "causation": nullable_str,
                "event_id": {"type": "string"},
                "event_type": {"type": "string"},
            },
        },
        "SessionPage": {
            "type": "object",
            "properties": {
                "session": {"type": "string"},
                "items": {"type": "array", "items": _ref("SessionItem")},
                "next_cursor": nullable_str,
            },
        },
    }


def _items(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"items": {"type": "array", "items": schema}}}


def spec() -> dict[str, Any]:
    error = {
        "type": "object",
        "required": ["ok", "error"],
        "properties": {"ok": {"type": "boolean", "enum": [False]}, "error": {"type": "string"}},
    }
    nullable_str = {"type": ["string", "null"]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "clawdbot-webhooks admin API",
            "version": __version__,
            "description": "Deliveries, attempts, dead letters and configuration of a running "
            "clawdbot-webhooks server. Every request needs "
            "`Authorization: Bearer <webhooks.admin.token>`.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/admin/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": _json({"type": "object"}), **_ERRORS},
                }
            },
            "/admin/api/incoming": _listing("incoming", "hook"),
            "/admin/api/incoming/{id}": _show("incoming"),
            "/admin/api/incoming/{id}/replay": _replay(
                "incoming", "Run an incoming delivery's action again"
            ),
            "/admin/api/outgoing": _listing("outgoing", "subscription"),
            "/admin/api/outgoing/{id}": _show("outgoing"),
            "/admin/api/outgoing/{id}/replay": _replay(
                "outgoing", "Send an outgoing delivery again"
            ),
            "/admin/api/events": {
                "get": {
                    "summary": "List stored events, newest first",
                    "operationId": "list_events",
                    "parameters": _EVENT_PARAMS,
                    "responses": {"200": _json(_ref("EventPage")), **_ERRORS},
                }
            },
            "/admin/api/events/{id}": {
                "get": {
                    "summary": "One event with its payload and outgoing deliveries",
                    "operationId": "show_event",
                    "parameters": [_ID],
                    "responses": {"200": _json(_ref("Event")), **_ERRORS, **_NOT_FOUND},
                }
            },
            "/admin/api/sessions/{key}": {
                "get": {
                    "summary": "A session's incoming deliveries, events and outgoing "
                    "deliveries, oldest first",
                    "operationId": "show_session",
                    "parameters": [
                        {
                            "name": "key",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        _param("cursor", "``next_cursor`` of the previous page."),
                        _param(
                            "limit",
                            "Page size (1-500, default 50).",
                            {"type": "integer", "minimum": 1, "maximum": 500},
                        ),
                    ],
                    "responses": {"200": _json(_ref("SessionPage")), **_ERRORS},
                }
            },
            "/admin/api/dead-letters": {
                "get": {
                    "summary": "List dead letters, oldest first",
                    "operationId": "list_dead_letters",
                    "parameters": [_param("since", "Created at or after this time.")],
                    "responses": {"200": _json(_items(_ref("DeadLetter"))), **_ERRORS},
                },
                "delete": {
                    "summary": "Purge dead letters (all, or those created before a time)",
                    "operationId": "purge_dead_letters",
                    "parameters": [_param("before", "Only those created before this time.")],
                    "responses": {"200": _json(_ref("Purged")), **_ERRORS},
                },
            },
            "/admin/api/dead-letters/replay": {
                "post": {
                    "summary": "Replay dead letters: some ids, or all (since a time)",
                    "operationId": "replay_dead_letters",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "ids": {"type": "array", "items": {"type": "string"}},
                                        "all": {"type": "boolean"},
                                        "since": {"type": ["string", "number"]},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {"202": _json(_ref("Revived"), "Pending again"), **_ERRORS},
                }
            },
            "/admin/api/dead-letters/{id}": {
                "delete": {
                    "summary": "Purge one dead letter",
                    "operationId": "purge_dead_letter",
                    "parameters": [_ID],
                    "responses": {"200": _json(_ref("Purged")), **_ERRORS, **_NOT_FOUND},
                }
            },
            "/admin/api/dead-letters/{id}/replay": {
                "post": {
                    "summary": "Replay one dead letter",
                    "operationId": "replay_dead_letter",
                    "parameters": [_ID],
                    "responses": {
                        "202": _json(_ref("Revived"), "Pending again"),
                        **_ERRORS,
                        **_NOT_FOUND,
                    },
                }
            },
            "/admin/api/handlers": {
                "get": {
                    "summary": "Configured incoming handlers",
                    "operationId": "list_handlers",
                    "responses": {"200": _json(_items({"type": "object"})), **_ERRORS},
                }
            },
            "/admin/api/subscriptions": {
                "get": {
                    "summary": "Configured outgoing subscriptions with their circuit breaker",
                    "operationId": "list_subscriptions",
                    "responses": {"200": _json(_items({"type": "object"})), **_ERRORS},
                }
            },
            "/admin/api/plugins": {
                "get": {
                    "summary": "Loaded plugins, what they register, enabled or not",
                    "operationId": "list_plugins",
                    "responses": {"200": _json(_items({"type": "object"})), **_ERRORS},
                }
            },
            "/admin/api/config": {
                "get": {
                    "summary": "The config file followed and its live reloads",
                    "operationId": "config_status",
                    "responses": {"200": _json({"type": "object"}), **_ERRORS},
                }
            },
            "/admin/api/stats/endpoints": {
                "get": {
                    "summary": "Per hook and subscription: statuses, rates, last error and success",
                    "operationId": "stats_endpoints",
                    "parameters": [
                        _param(
                            "window", "Seconds to look back (default 86400).", {"type": "number"}
                        ),
                    ],
                    "responses": {"200": _json({"type": "object"}), **_ERRORS},
                }
            },
            "/admin/api/stats/throughput": {
                "get": {
                    "summary": "Finished deliveries per time bucket",
                    "operationId": "stats_throughput",
                    "parameters": [
                        _param(
                            "window", "Seconds to look back (default 3600).", {"type": "number"}
                        ),
                        _param(
                            "bucket", "Bucket size in seconds (default 60).", {"type": "number"}
                        ),
                    ],
                    "responses": {"200": _json(_ref("Throughput")), **_ERRORS},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "BadRequest": _json(_ref("Error"), "Bad parameter"),
                "Unauthorized": _json(_ref("Error"), "Missing or wrong admin token"),
                "NotFound": _json(_ref("Error"), "No such delivery, event or dead letter"),
                "Conflict": _json(_ref("Error"), "The delivery is pending already"),
            },
            "schemas": {
                "Error": error,
                "DeliverySummary": {
                    "type": "object",
                    "required": ["kind", "id", "target", "status", "attempts", "created_at"],
                    "properties": {
                        "kind": {"type": "string", "enum": ["incoming", "outgoing"]},
                        "id": {"type": "string"},
                        "target": {"type": "string"},
                        "hook": {"type": "string"},
                        "subscription": {"type": "string"},
                        "status": {"type": "string"},
                        "attempts": {"type": "integer"},
                        "created_at": {"type": "number"},
                        "finished_at": {"type": ["number", "null"]},
                        "next_attempt_at": {"type": "number"},
                        "last_error": nullable_str,
                        "session": nullable_str,
                        "event_type": nullable_str,
                        "causation": {
                            **nullable_str,
                            "description": "Outgoing: the delivery that caused its event.",
                        },
                    },
                },
                "DeliveryPage": {
                    "type": "object",
                    "properties": {
                        "items": {"type": "array", "items": _ref("DeliverySummary")},
                        "next_cursor": nullable_str,
                    },
                },
                "Attempt": {
                    "type": "object",
                    "properties": {
                        "delivery_id": {"type": "string"},
                        "number": {"type": "integer"},
                        "at": {"type": "number"},
                        "status": {"type": ["integer", "null"]},
                        "latency_ms": {"type": "number"},
                        "response": nullable_str,
                        "error": nullable_str,
                    },
                },
                "Delivery": {
                    "type": "object",
                    "description": "A summary's fields plus payload (text), headers, query, "
                    "result, rendered templates and the events it caused (incoming); url, "
                    "causation and its event (outgoing).",
                    "properties": {
                        "kind": {"type": "string"},
                        "id": {"type": "string"},
                        "status": {"type": "string"},
                        "payload": {"type": "string"},
                        "rendered": {"type": "object"},
                        "history": {"type": "array", "items": _ref("Attempt")},
                        "caused": {"type": "array", "items": _ref("CausedEvent")},
                        "causation": nullable_str,
                        "event": {"oneOf": [_ref("EventRef"), {"type": "null"}]},
                    },
                },
                **_event_schemas(nullable_str),
                "DeadLetter": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "kind": {"type": "string"},
                        "target": {"type": "string"},
                        "created_at": {"type": "number"},
                        "attempts": {"type": "integer"},
                        "error": nullable_str,
                    },
                },
                "Replayed": {
                    "type": "object",
                    "properties": {
                        "ok": {"type": "boolean"},
                        "id": {"type": "string"},
                        "kind": {"type": "string"},
                        "status": {"type": "string"},
                    },
                },
                "Revived": {
                    "type": "object",
                    "properties": {
                        "ok": {"type": "boolean"},
                        "replayed": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "Purged": {
                    "type": "object",
                    "properties": {"ok": {"type": "boolean"}, "purged": {"type": "integer"}},
                },
                "Throughput": {
                    "type": "object",
                    "properties": {
                        "start": {"type": "number"},
                        "end": {"type": "number"},
                        "bucket": {"type": "number"},
                        "items": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "at": {"type": "number"},
                                    "kind": {"type": "string"},
                                    "status": {"type": "string"},
                                    "count": {"type": "integer"},
                                },
                            },
                        },
                    },
                },
            },
        },
    }
