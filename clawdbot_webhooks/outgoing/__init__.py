"""Outgoing webhooks: the durable outbox, its dispatcher and the circuit breakers."""
