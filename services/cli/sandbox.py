"""`halaxy-bridge sandbox`: serve the fake Halaxy and the fake platforms on one port."""

from __future__ import annotations

import shlex

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
    """Fake Halaxy at /main, fake Physitrack at /api/v2, fake REST platform at /patients.

    Without keys given it makes one Halaxy key and one platform key, and prints them with
    the `connections add` command that onboards a clinic against this sandbox."""
    halaxy, physitrack, rest = FakeHalaxy(), FakePhysitrack(), FakeRestPlatform()
    given_halaxy = [halaxy.add_key(*key.partition(":")[::2]) for key in halaxy_keys]
    halaxy_key = given_halaxy[0] if given_halaxy else halaxy.add_key()
    platform_key = platform_keys[0] if platform_keys else physitrack.add_key()
    for key in {*platform_keys, platform_key}:
        physitrack.api_keys.add(key)
        rest.api_keys.add(key)
    for number in range(patients):
        patient_id = str(1001 + number)
        halaxy.patients[patient_id] = patient_resource(patient_id)
    app = Starlette(routes=[*halaxy.app().routes, *physitrack.app().routes, *rest.app().routes])
    base = f"http://{host}:{port}"
    click.echo(f"Halaxy:     {base}/main  (keys: {len(halaxy.keys)})")
    click.echo(f"Physitrack: {base}/api/v2  (keys: {len(physitrack.api_keys)})")
    click.echo(f"REST:       {base}")
    click.echo(f"Halaxy key (--halaxy-key):         {halaxy_key}")
    click.echo(f"Platform key (--platform-api-key): {platform_key}")
    click.echo("Add a connection against this sandbox (another terminal, same REDIS_URL):")
    click.echo(f"  {onboarding_command(base, halaxy_key, platform_key)}")
    uvicorn.run(app, host=host, port=port, log_level="info")


def onboarding_command(base: str, halaxy_key: str, platform_key: str) -> str:
    """The `connections add` line for a clinic on this sandbox: Physitrack, PDFs served here."""
    args = [
        "halaxy-bridge",
        "connections",
        "add",
        "--name",
        "Sandbox Clinic",
        "--halaxy-key",
        halaxy_key,
        "--halaxy-base-url",
        f"{base}/main",
        "--platform",
        "physitrack",
        "--platform-base-url",
        f"{base}/api/v2",
        "--platform-api-key",
        platform_key,
        "--pdf-hosts",
        base.removeprefix("http://"),
    ]
    return shlex.join(args)
