"""Outgoing webhooks: the durable outbox, its dispatcher, how an attempt is judged and the
circuit breakers."""
