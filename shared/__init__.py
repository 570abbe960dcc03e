"""Domain and adapters shared by the receiver, the workers and the CLI.

Nothing in this package imports Starlette or Dramatiq.
"""
