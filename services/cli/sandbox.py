"""`halaxy-bridge sandbox`: serve the fake Halaxy and the fake platforms on one port."""

from __future__ import annotations

import click
import uvicorn
from starlette.applications import Starlette

from services.sandbox.halaxy import FakeHalaxy, patient_resource
from services.sandbox.physitrack import FakePhysitrack
from services.sandbox.rest_platform import FakeRestPlatform


@click.command()
@click.option("--port", type=int, default=8100, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--halaxy-key",
    "halaxy_keys",
    multiple=True,
    metavar="ID:SECRET",
    help="A Halaxy API key to accept (repeatable).",
)
@click.option(
    "--platform-key",
    "platform_keys",
    multiple=True,
    metavar="KEY",
    help="A Physitrack / REST platform API key to accept (repeatable).",
)
@click.option("--patients", default=5, show_default=True, help="Sample patients 1001, 1002, ...")
def sandbox(
    port: int,
    host: str,
    halaxy_keys: tuple[str, ...],
    platform_keys: tuple[str, ...],
    patients: int,
) -> None:
    """Fake Halaxy at /main, fake Physitrack at /api/v2, fake REST platform at /patients."""
    halaxy, physitrack, rest = FakeHalaxy(), FakePhysitrack(), FakeRestPlatform()
    for key in halaxy_keys:
        client_id, _, client_secret = key.partition(":")
        halaxy.add_key(client_id, client_secret)
    physitrack.api_keys.update(platform_keys)
    rest.api_keys.update(platform_keys)
    for number in range(patients):
        patient_id = str(1001 + number)
        halaxy.patients[patient_id] = patient_resource(patient_id)
    app = Starlette(routes=[*halaxy.app().routes, *physitrack.app().routes, *rest.app().routes])
    click.echo(f"Halaxy:     http://{host}:{port}/main  (keys: {len(halaxy.keys)})")
    click.echo(f"Physitrack: http://{host}:{port}/api/v2")
    click.echo(f"REST:       http://{host}:{port}")
    uvicorn.run(app, host=host, port=port, log_level="info")
