"""The bottom layer: settings, errors, logging, clock, Redis, codec, jobs, audit trail.

Everything else in `shared` may use it; it imports nothing above it.
"""
