"""Programs back: the platform's callback, its intake, PDF fetch, the outbox, the writer and
the resolution of parked notes."""
