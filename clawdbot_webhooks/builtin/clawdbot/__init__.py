"""The two built-in gateways to a real Clawdbot, each its own plugin: ``clawdbot`` over its
WebSocket protocol (``gateway.py``, with the client in ``client.py``) and ``clawdbot-http``
over its HTTP hooks (``http_gateway.py``)."""
