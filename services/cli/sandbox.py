"""`halaxy-bridge sandbox`: serve the fake Halaxy on a port, for manual tests."""

from __future__ import annotations

import click
import uvicorn

from services.sandbox.halaxy import FakeHalaxy


@click.command()
@click.option("--port", type=int, default=8100, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--key", "keys", multiple=True, metavar="ID:SECRET", help="An API key to accept.")
def sandbox(port: int, host: str, keys: tuple[str, ...]) -> None:
    """Serve the fake Halaxy (token endpoint so far) at http://HOST:PORT/main."""
    fake = FakeHalaxy()
    for key in keys:
        client_id, _, client_secret = key.partition(":")
        fake.add_key(client_id, client_secret)
    uvicorn.run(fake.app(), host=host, port=port, log_level="info")
