"""The deployment files agree with the Procfile, with the durability settings and with each
other, and the tools that read them accept them: Kubernetes' own JSON schemas (through
kubernetes-validate, offline), `docker compose config`, redis-server and redis-cli, the
image's healthcheck against a served receiver, and, where a Docker engine answers, the image
itself built and run."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis
import yaml
from cryptography.fernet import Fernet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.sandbox.serve import ServerThread
from tests.redis_server import free_port

pytestmark = pytest.mark.dateless  # reads no date: left out of the year-ahead run

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
PROCFILE = dict(
    line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line
)
BRIDGE = ("web", "worker", "scheduler")
IMAGE_USER = 10001  # deploy/Dockerfile's USER, which the pods' securityContext names too
REDIS_CLIENT_LABEL = "halaxy-bridge/redis-client"
PINNED_REDIS = r"redis:\d+\.\d+\.\d+-bookworm(@sha256:[0-9a-f]{64})?"  # an exact release
# The oldest Kubernetes the manifests are meant for, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def command(value: list[str]) -> str:
    """A container command as the shell line it runs."""
    if value[:2] == ["sh", "-c"]:
        return value[2].removeprefix("exec ")
    return shlex.join(value)


def worker_sizing(line: str) -> tuple[str, int, int]:
    """A worker command line without its `--processes N`, and its processes and threads."""
    words = shlex.split(line)
    processes = int(words[words.index("--processes") + 1]) if "--processes" in words else 0
    threads = int(words[words.index("--threads") + 1])
    if processes:
        at = words.index("--processes")
        del words[at : at + 2]
    return shlex.join(words), processes, threads


def manifests() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return documents


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in manifests() if d["kind"] == kind}


def container(workload: dict[str, Any]) -> dict[str, Any]:
    [only] = workload["spec"]["template"]["spec"]["containers"]
    return only


def compose_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return loaded


def dockerfile() -> list[str]:
    """deploy/Dockerfile's instructions, continued lines joined, comments left out."""
    joined = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [
        line.strip()
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def healthcheck_command() -> list[str]:
    [line] = [line for line in dockerfile() if line.startswith("HEALTHCHECK ")]
    exec_form: list[str] = json.loads(line[line.index(" CMD ") + len(" CMD ") :])
    return exec_form


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def redis_conf(text: str) -> dict[str, list[str]]:
    """The directives of a redis.conf, each with its values (a directive may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.strip().partition(" ")
            settings.setdefault(name, []).append(value)
    return settings


def k8s_redis_conf() -> str:
    text: str = of_kind("ConfigMap")["halaxy-bridge-redis"]["data"]["redis.conf"]
    return text


# -- Redis ------------------------------------------------------------------------------


def test_redis_conf_keeps_queued_work() -> None:
    settings = {
        name: values[-1] for name, values in redis_conf((DEPLOY / "redis.conf").read_text()).items()
    }
    assert settings["appendonly"] == "yes"
    assert settings["appendfsync"] == "everysec"
    assert settings["maxmemory-policy"] == "noeviction"
    assert "requirepass" not in settings  # the password comes from the environment


def test_the_kubernetes_redis_conf_is_deploy_redis_conf_capped_under_its_memory_limit() -> None:
    deployed = redis_conf(k8s_redis_conf())
    assert {**deployed, "maxmemory": []} == {
        **redis_conf((DEPLOY / "redis.conf").read_text()),
        "maxmemory": [],
    }
    [cap] = deployed["maxmemory"]
    limit = container(of_kind("StatefulSet")["halaxy-bridge-redis"])["resources"]["limits"]
    assert cap.endswith("mb")
    # noeviction refuses writes at maxmemory only: below the limit, with room for a fork.
    assert float(cap.removesuffix("mb")) <= 0.8 * mebibytes(limit["memory"])


@pytest.fixture
def redis_password() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(params=["deploy/redis.conf", "deploy/k8s/redis.yaml"])
def redis_with_password(
    request: pytest.FixtureRequest, tmp_path: Path, redis_password: str
) -> Iterator[int]:
    """redis-server with each redis.conf, started as compose and Kubernetes start it (the
    password as --requirepass), on a loopback port and a directory of its own: its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    text = (
        (DEPLOY / "redis.conf").read_text()
        if request.param == "deploy/redis.conf"
        else k8s_redis_conf()
    )
    # `dir /data` is where the containers keep it; here, a directory of this test's own.
    conf = tmp_path / "redis.conf"
    conf.write_text(re.sub(r"(?m)^dir .*$", "", text))
    redis_command = compose_file()["services"]["redis"]["command"]
    assert redis_command[1:3] == ["/usr/local/etc/redis/redis.conf", "--requirepass"]
    port = free_port()
    started_as_deployed = [binary, str(conf), "--requirepass", redis_password]
    here = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    process = subprocess.Popen(
        [*started_as_deployed, *here],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, process.communicate()[0].decode()
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def redis_healthcheck(port: int, password: str | None) -> int:
    """The compose healthcheck of Redis (the Kubernetes probes run the same), on `port`."""
    [kind, shell] = compose_file()["services"]["redis"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    environment = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    if password is not None:
        environment["REDISCLI_AUTH"] = password
    shell = shell.replace("redis-cli", f"redis-cli -p {port}")
    return subprocess.run(["sh", "-c", shell], env=environment, check=False, timeout=30).returncode


def test_redis_starts_from_each_conf_with_aof_and_answers_only_with_its_password(
    redis_with_password: int, redis_password: str
) -> None:
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed (apt-get install redis-tools)")
    port = redis_with_password

    assert redis_healthcheck(port, redis_password) == 0
    assert redis_healthcheck(port, "wrong-" + redis_password) != 0
    assert redis_healthcheck(port, None) != 0
    client = redis.Redis(port=port, password=redis_password)
    try:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        client.close()


# -- The image ---------------------------------------------------------------------------


def test_dockerfile_pins_its_base_runs_as_a_numeric_non_root_user_and_defaults_to_web() -> None:
    lines = dockerfile()
    [arg] = [line for line in lines if line.startswith("ARG PYTHON_IMAGE=")]
    base = arg.removeprefix("ARG PYTHON_IMAGE=")
    # An exact Python release on a named Debian release: never `3.11-slim` or `latest`.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms == ["FROM ${PYTHON_IMAGE} AS build", "FROM ${PYTHON_IMAGE}"]  # multi-stage
    [user] = [line for line in lines if line.startswith("USER ")]
    assert user == f"USER {IMAGE_USER}:{IMAGE_USER}"
    [cmd] = [line for line in lines if line.startswith("CMD ")]
    assert command(json.loads(cmd.removeprefix("CMD "))) == PROCFILE["web"]


def test_the_healthcheck_asks_readyz_with_python_alone() -> None:
    [line] = [line for line in dockerfile() if line.startswith("HEALTHCHECK ")]
    check = healthcheck_command()
    assert check[:2] == ["python", "-c"]  # the slim image has no curl
    assert "/readyz" in check[2]
    assert "--start-period=" in line
    assert "--timeout=" in line


def run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PORT": str(port)}
    check = [sys.executable, *healthcheck_command()[1:]]
    return subprocess.run(
        check, env=environment, capture_output=True, text=True, check=False, timeout=30
    )


def test_the_healthcheck_passes_on_a_ready_receiver(app: Starlette) -> None:
    with ServerThread(app) as server:
        assert run_healthcheck(server.port).returncode == 0


def test_the_healthcheck_fails_on_503_and_on_no_answer() -> None:
    async def unready(request: Request) -> JSONResponse:
        return JSONResponse({"detail": "Redis is unreachable"}, status_code=503)

    with ServerThread(Starlette(routes=[Route("/readyz", unready)])) as server:
        assert run_healthcheck(server.port).returncode != 0
    assert run_healthcheck(free_port()).returncode != 0


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context, as Docker decides: the
    last pattern matching the path or one of its parent directories wins."""

    def regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        if any(regex(pattern).fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_the_build_context_carries_what_the_image_copies_and_no_secret() -> None:
    copied = [
        source
        for line in dockerfile()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    ]
    assert set(copied) == {"pyproject.toml", "README.md", "shared", "services"}
    tracked = subprocess.run(
        ["git", "ls-files", *copied], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked
    assert [path for path in tracked if dockerignore_excludes(path)] == []
    for kept_out in (
        ".env",
        ".env.production",
        "shared/.env",
        "services/tls.key",
        ".git/config",
        ".venv/bin/python",
        ".cache/hl7/package/Patient-example.json",
        "build/bench/run.log",
        "tests/test_deploy.py",
        "bench/__main__.py",
        "docs/operations.md",
        "halaxy_bridge.egg-info/PKG-INFO",
        "shared/infra/__pycache__/store.cpython-311.pyc",
        "services/cli/.mypy_cache/x.json",
        "dump.rdb",
    ):
        assert dockerignore_excludes(kept_out), kept_out


# -- Compose -----------------------------------------------------------------------------


def test_compose_runs_the_procfile_against_redis_with_its_config() -> None:
    services = compose_file()["services"]
    assert set(services) == {"redis", *BRIDGE}
    for name in ("web", "scheduler"):
        assert command(services[name]["command"]) == PROCFILE[name]
    line, processes, threads = worker_sizing(command(services["worker"]["command"]))
    assert line == PROCFILE["worker"].replace("--threads 16", f"--threads {threads}")
    # The same pod size as in Kubernetes (deploy/k8s/worker.yaml explains it).
    k8s_worker = command(container(of_kind("Deployment")["halaxy-bridge-worker"])["command"])
    assert (processes, threads) == worker_sizing(k8s_worker)[1:]
    for name in BRIDGE:
        environment = services[name]["environment"]
        assert environment["REDIS_URL"] == "redis://redis:6379/0"  # no password in it
        assert environment["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert "./redis.conf:/usr/local/etc/redis/redis.conf:ro" in services["redis"]["volumes"]
    assert "ports" not in services["redis"]  # only the bridge reaches it
    # The receiver's port (its /ops and /admin too) on the host's loopback only.
    assert all(str(port).startswith("127.0.0.1:") for port in services["web"]["ports"])


def test_compose_restarts_checks_health_and_starts_the_bridge_once_redis_is_healthy() -> None:
    services = compose_file()["services"]
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], name
    assert services["web"]["healthcheck"]["test"] == ["CMD", *healthcheck_command()]
    for name in ("worker", "scheduler"):
        assert services[name]["healthcheck"]["test"] == ["CMD", "halaxy-bridge", "probe", name]
    for name in BRIDGE:
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}


def test_compose_gives_redis_a_password_from_the_environment_never_a_committed_one() -> None:
    redis_service = compose_file()["services"]["redis"]
    [password] = [
        redis_service["command"][i + 1]
        for i, word in enumerate(redis_service["command"])
        if word == "--requirepass"
    ]
    assert password.startswith("${REDIS_PASSWORD:?")  # compose refuses to start without it
    assert redis_service["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    # An exact release, the same in Kubernetes (a digest may follow: README, Deployment).
    assert re.fullmatch(PINNED_REDIS, redis_service["image"]), redis_service["image"]
    redis_container = container(of_kind("StatefulSet")["halaxy-bridge-redis"])
    assert redis_container["image"] == redis_service["image"]


def compose_command() -> list[str] | None:
    """`docker compose` (the plugin) where it works, else `docker-compose`, else None."""
    if shutil.which("docker") is not None:
        plugin = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False, timeout=60
        )
        if plugin.returncode == 0:
            return ["docker", "compose"]
    standalone = shutil.which("docker-compose")
    return None if standalone is None else [standalone]


@pytest.fixture(scope="module")
def compose() -> list[str]:
    found = compose_command()
    if found is None:
        pytest.skip(
            "neither `docker compose` (the plugin) nor `docker-compose` is installed "
            "(scripts/ensure_tools.sh installs Debian's docker-compose when run as root)"
        )
    return found


def compose_config(
    compose: list[str], tmp_path: Path, environment: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`docker compose config` over a copy of deploy/ beside a .env made from .env.example,
    as an operator's checkout would have (.env is never committed)."""
    (tmp_path / "deploy").mkdir()
    for name in ("docker-compose.yml", "redis.conf", "Dockerfile"):
        shutil.copy(DEPLOY / name, tmp_path / "deploy" / name)
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "COMPOSE_"))}
    return subprocess.run(
        [*compose, "-f", "deploy/docker-compose.yml", "config"],
        cwd=tmp_path,
        env={**clean, **environment},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_docker_compose_config_accepts_the_stack(compose: list[str], tmp_path: Path) -> None:
    password = secrets.token_urlsafe(24)

    done = compose_config(compose, tmp_path, {"REDIS_PASSWORD": password})

    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    assert set(resolved) == {"redis", *BRIDGE}
    for name, service in resolved.items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], name
    for name in BRIDGE:
        assert service_depends_on_healthy_redis(resolved[name]), name
        assert resolved[name]["environment"]["REDIS_PASSWORD"] == password
        assert resolved[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert resolved["redis"]["command"][-2:] == ["--requirepass", password]
    assert resolved["redis"]["environment"]["REDISCLI_AUTH"] == password


def service_depends_on_healthy_redis(service: dict[str, Any]) -> bool:
    depends: dict[str, Any] = service["depends_on"]
    return bool(depends["redis"]["condition"] == "service_healthy")


def test_docker_compose_config_refuses_to_run_without_a_redis_password(
    compose: list[str], tmp_path: Path
) -> None:
    done = compose_config(compose, tmp_path, {})

    assert done.returncode != 0
    assert "set REDIS_PASSWORD" in done.stderr


# -- Kubernetes --------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    """Strict: a misspelt or misplaced field is an error, not ignored."""
    documents = manifests()
    assert len(documents) >= 12
    for document in documents:
        name = f"{document['kind']}/{document['metadata']['name']}"
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}, at {exc.json_path}, for Kubernetes {version}: {exc.message}")


def test_k8s_manifests_have_the_expected_kinds_commands_and_probes() -> None:
    kinds = sorted(d["kind"] for d in manifests())
    assert kinds.count("Deployment") == 3
    assert {
        "ConfigMap",
        "Secret",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Ingress",
    } <= set(kinds)
    deployments = of_kind("Deployment")
    for process in ("web", "scheduler"):
        assert (
            command(container(deployments[f"halaxy-bridge-{process}"])["command"])
            == (PROCFILE[process])
        )
    worker = container(deployments["halaxy-bridge-worker"])
    line, _, threads = worker_sizing(command(worker["command"]))
    assert line == PROCFILE["worker"].replace("--threads 16", f"--threads {threads}")
    web = container(deployments["halaxy-bridge-web"])
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for process in ("worker", "scheduler"):
        probed = container(deployments[f"halaxy-bridge-{process}"])
        probe = ["halaxy-bridge", "probe", process]
        # Liveness (and start-up) pass while Redis is down: a restart would not help.
        assert probed["startupProbe"]["exec"]["command"] == [*probe, "--redis-down-ok"]
        assert probed["livenessProbe"]["exec"]["command"] == [*probe, "--redis-down-ok"]
        assert probed["readinessProbe"]["exec"]["command"] == probe
        # The probe starts a Python process: give it time.
        assert probed["livenessProbe"]["timeoutSeconds"] >= 5
    redis_settings = redis_conf(k8s_redis_conf())
    assert redis_settings["maxmemory-policy"] == ["noeviction"]
    assert redis_settings["appendonly"] == ["yes"]


def test_every_pod_runs_as_a_non_root_user_that_cannot_escalate_nor_call_the_api() -> None:
    for name, workload in {**of_kind("Deployment"), **of_kind("StatefulSet")}.items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        if name != "halaxy-bridge-redis":  # the redis image's own user, 999
            assert pod["securityContext"]["runAsUser"] == IMAGE_USER, name
        hardened = container(workload)["securityContext"]
        assert hardened["allowPrivilegeEscalation"] is False, name
        assert hardened["readOnlyRootFilesystem"] is True, name
        assert hardened["capabilities"]["drop"] == ["ALL"], name


def password_from_the_redis_secret(env: list[dict[str, Any]], name: str) -> bool:
    [variable] = [variable for variable in env if variable["name"] == name]
    return bool(
        variable["valueFrom"]["secretKeyRef"] == {"name": "halaxy-bridge-redis", "key": "password"}
    )


def test_redis_requires_the_password_of_a_secret_which_the_bridge_sends() -> None:
    redis_container = container(of_kind("StatefulSet")["halaxy-bridge-redis"])
    assert redis_container["command"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert password_from_the_redis_secret(redis_container["env"], "REDIS_PASSWORD")
    assert password_from_the_redis_secret(redis_container["env"], "REDISCLI_AUTH")
    for name in BRIDGE:
        bridge = container(of_kind("Deployment")[f"halaxy-bridge-{name}"])
        assert password_from_the_redis_secret(bridge["env"], "REDIS_PASSWORD"), name
    # Created by hand (kubectl create secret), never committed: no manifest carries it.
    assert "halaxy-bridge-redis" not in of_kind("Secret")
    for secret in of_kind("Secret").values():
        assert "REDIS_PASSWORD" not in secret.get("stringData", {})
    [config] = [d for d in of_kind("ConfigMap").values() if "REDIS_URL" in d["data"]]
    assert "@" not in config["data"]["REDIS_URL"]


def test_only_the_bridge_reaches_redis() -> None:
    [policy] = of_kind("NetworkPolicy").values()
    redis_pods = of_kind("StatefulSet")["halaxy-bridge-redis"]["spec"]["template"]["metadata"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= redis_pods["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {REDIS_CLIENT_LABEL: "true"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    labelled = {
        name
        for name, workload in {**of_kind("Deployment"), **of_kind("StatefulSet")}.items()
        if workload["spec"]["template"]["metadata"]["labels"].get(REDIS_CLIENT_LABEL) == "true"
    }
    assert labelled == {f"halaxy-bridge-{name}" for name in BRIDGE}


def test_a_drain_keeps_receivers_and_workers_running() -> None:
    budgets = of_kind("PodDisruptionBudget")
    deployments = of_kind("Deployment")
    for name in ("halaxy-bridge-web", "halaxy-bridge-worker"):
        budget = budgets[name]["spec"]
        pods = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert budget["selector"]["matchLabels"].items() <= pods.items()
        assert budget["maxUnavailable"] < deployments[name]["spec"]["replicas"]
    assert "halaxy-bridge-scheduler" not in budgets  # one replica: it would block drains


# A worker pod's sizing rules, explained in deploy/k8s/worker.yaml.
CPU_PER_PROCESS = 0.38  # a process of 16 threads with 100 ms upstream calls (P5)
PARENT_MIB = 32  # Dramatiq's parent process
PROCESS_MIB = 160  # a worker process: ~65 idle, pools and streamed PDFs
PROBE_MIB = 80  # one `halaxy-bridge probe`; two may run at once
MIN_THREADS = 11  # P5: 50 syncs/s at 100 ms a call


def test_the_worker_processes_and_threads_fit_its_requests() -> None:
    worker = container(of_kind("Deployment")["halaxy-bridge-worker"])
    _, processes, threads = worker_sizing(command(worker["command"]))
    requests, limits = worker["resources"]["requests"], worker["resources"]["limits"]
    cpu = cores(requests["cpu"])

    assert processes >= 1  # never Dramatiq's default, one per CPU of the node
    # Busy at full load within the CPU requested, and no more CPU requested than the
    # processes can use (one interpreter uses at most one CPU).
    assert processes * CPU_PER_PROCESS <= cpu <= processes
    assert "cpu" not in limits  # throttling would stall jobs and time out the probes
    assert mebibytes(requests["memory"]) >= PARENT_MIB + processes * PROCESS_MIB + 2 * PROBE_MIB
    assert mebibytes(limits["memory"]) >= mebibytes(requests["memory"])
    assert threads >= MIN_THREADS


def ingress_matches(path: str, path_type: str, request_path: str) -> bool:
    """Kubernetes' path matching: Exact, or Prefix by whole path elements."""
    if path_type == "Exact":
        return request_path == path
    wanted = [part for part in path.split("/") if part]
    return [part for part in request_path.split("/") if part][: len(wanted)] == wanted


def sample_path(template: str) -> str:
    """A request path a route template matches: each {parameter} filled in."""
    return re.sub(r"\{[^}:]+(:path)?\}", lambda m: "a/b" if m.group(1) else "x", template)


def test_the_ingress_serves_the_webhooks_alone_over_tls(app: Starlette) -> None:
    [ingress] = of_kind("Ingress").values()
    hosts = [rule["host"] for rule in ingress["spec"]["rules"]]
    covered = {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]}
    assert set(hosts) <= covered
    assert all(tls["secretName"] for tls in ingress["spec"]["tls"])
    paths = [
        (path["path"], path["pathType"])
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    backends = {
        path["backend"]["service"]["name"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert backends == {"halaxy-bridge-web"}
    templates = {route.path for route in app.routes if isinstance(route, Route)}
    webhooks = {t for t in templates if t.startswith("/webhooks/")}
    assert webhooks  # the app still has its webhook routes where this test looks
    for template in templates:
        routed = any(ingress_matches(p, t, sample_path(template)) for p, t in paths)
        assert routed == (template in webhooks), template
    for path, _ in paths:  # every rule leads to a webhook route, none to a guess
        assert any(ingress_matches(path, "Prefix", sample_path(t)) for t in webhooks), path


def test_metrics_stay_off_the_public_way_in_and_are_scraped_with_a_credential() -> None:
    """Prometheus scrapes the metrics Service, a ClusterIP one, with a named admin's token
    from a file (`/metrics` answers 401 without); the Ingress never routes /metrics (above)."""
    services = of_kind("Service")
    scraped = services["halaxy-bridge-web-metrics"]["spec"]
    assert scraped.get("type", "ClusterIP") == "ClusterIP"
    assert [port["name"] for port in scraped["ports"]] == ["metrics"]
    [config] = [d for d in of_kind("ConfigMap").values() if "REDIS_URL" in d["data"]]
    assert config["data"].get("BRIDGE_METRICS_PUBLIC", "false") == "false"

    scrape = yaml.safe_load((DEPLOY / "prometheus" / "scrape.yml").read_text())
    [job] = scrape["scrape_configs"]
    assert job["job_name"] == "halaxy-bridge"  # what BridgeMetricsDown looks for
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"].startswith("/etc/prometheus/secrets/")
    kept = [r["regex"] for r in job["relabel_configs"] if r["action"] == "keep"]
    assert "halaxy-bridge-web-metrics" in kept


# -- The image, built and run where a Docker engine answers -------------------------------


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=False, timeout=timeout
    )


@pytest.fixture(scope="module")
def docker_engine() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker client on this machine: the image is not built here")
    info = docker("info", timeout=60)
    if info.returncode != 0:
        detail = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        pytest.skip(
            "the docker client is installed but no Docker engine answers (`docker info`: "
            f"{detail}): the image is not built here"
        )


@pytest.mark.slow
def test_the_image_builds_and_its_receiver_gets_ready(
    docker_engine: None, redis_password: str
) -> None:
    tag = f"halaxy-bridge:test-{secrets.token_hex(4)}"
    network = f"hb-test-{secrets.token_hex(4)}"
    redis_name, web_name = f"{network}-redis", f"{network}-web"
    built = docker("build", "-f", str(DEPLOY / "Dockerfile"), "-t", tag, str(ROOT), timeout=900)
    assert built.returncode == 0, built.stderr[-4000:]
    try:
        helped = docker("run", "--rm", tag, "halaxy-bridge", "--help")
        assert helped.returncode == 0, helped.stderr
        assert "probe" in helped.stdout
        assert docker("run", "--rm", tag, "id", "-u").stdout.strip() == str(IMAGE_USER)

        assert docker("network", "create", network).returncode == 0
        redis_image = compose_file()["services"]["redis"]["image"]
        started = docker(
            "run", "-d", "--name", redis_name, "--network", network, redis_image,
            "redis-server", "--requirepass", redis_password,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        started = docker(
            "run", "-d", "--name", web_name, "--network", network,
            "-e", f"REDIS_URL=redis://{redis_name}:6379/0",
            "-e", f"REDIS_PASSWORD={redis_password}",
            "-e", f"BRIDGE_SECRET_KEY={Fernet.generate_key().decode()}",
            "-e", f"BRIDGE_ADMIN_TOKEN={secrets.token_urlsafe(24)}",
            tag,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr

        # The image's own HEALTHCHECK (GET /readyz) turns the container healthy.
        deadline = time.monotonic() + 180
        health = ""
        while time.monotonic() < deadline and health != "healthy":
            time.sleep(2)
            health = docker("inspect", "-f", "{{.State.Health.Status}}", web_name).stdout.strip()
        assert health == "healthy", docker("logs", web_name).stderr[-4000:]
        ready = docker(
            "exec", web_name, "python", "-c",
            "import urllib.request; print(urllib.request.urlopen("
            "'http://127.0.0.1:8000/readyz', timeout=5).read().decode())",
        )  # fmt: skip
        assert ready.returncode == 0, ready.stderr
        assert json.loads(ready.stdout)["status"] == "ready"
    finally:
        docker("rm", "-f", web_name, redis_name)
        docker("network", "rm", network)
        docker("rmi", "-f", tag)
