"""The Starlette receiver: authenticate, cap, parse, deduplicate, enqueue, answer."""
