"""The ``webhooks`` section of a JSON5 config file: its schema (``schema``), the typed
settings it loads into (``model``), and finding, reading and building them (``load``,
``build``)."""

from __future__ import annotations

from clawdbot_webhooks.config.build import build_settings
from clawdbot_webhooks.config.errors import ConfigError, flatten_errors
from clawdbot_webhooks.config.load import (
    STORE_KEYS,
    ClawdbotsOwnFile,
    load_settings,
    plugin_selection,
    read_raw,
    selection_of,
)
from clawdbot_webhooks.config.model import (
    CREDENTIAL_HEADERS,
    AdminSettings,
    AuthFailures,
    EventIngress,
    GatewaySettings,
    HandlerSpec,
    IncomingSettings,
    LoggingSettings,
    PluginSettings,
    RateLimit,
    RetentionSettings,
    SessionsSettings,
    Settings,
    StorageSettings,
    Subscription,
    VerifySpec,
)
from clawdbot_webhooks.config.paths import CONFIG_ENV, default_path, find_config, search_paths
from clawdbot_webhooks.config.schema import parse_age

__all__ = [
    "CONFIG_ENV",
    "CREDENTIAL_HEADERS",
    "STORE_KEYS",
    "AdminSettings",
    "AuthFailures",
    "ClawdbotsOwnFile",
    "ConfigError",
    "EventIngress",
    "GatewaySettings",
    "HandlerSpec",
    "IncomingSettings",
    "LoggingSettings",
    "PluginSettings",
    "RateLimit",
    "RetentionSettings",
    "SessionsSettings",
    "Settings",
    "StorageSettings",
    "Subscription",
    "VerifySpec",
    "build_settings",
    "default_path",
    "find_config",
    "flatten_errors",
    "load_settings",
    "parse_age",
    "plugin_selection",
    "read_raw",
    "search_paths",
    "selection_of",
]
