"""The HTTP side: the app, the webhook endpoint, request parsing, limits, the admin API
and the event ingress."""
