"""The deployment files agree with the Procfile and with the durability settings."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parent.parent
PROCFILE = dict(
    line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line
)


def command(value: list[str]) -> str:
    """A container command as the shell line it runs."""
    if value[:2] == ["sh", "-c"]:
        return value[2].removeprefix("exec ")
    return shlex.join(value)


def manifests() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return documents


def test_redis_conf_keeps_queued_work() -> None:
    settings = {
        line.split()[0]: " ".join(line.split()[1:])
        for line in (ROOT / "deploy" / "redis.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert settings["appendonly"] == "yes"
    assert settings["appendfsync"] == "everysec"
    assert settings["maxmemory-policy"] == "noeviction"


def test_compose_runs_the_procfile_against_redis_with_its_config() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "web", "worker", "scheduler"}
    for name in ("web", "worker", "scheduler"):
        assert command(services[name]["command"]) == PROCFILE[name]
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert any("redis.conf" in volume for volume in services["redis"]["volumes"])


def test_dockerfile_is_slim_non_root_and_defaults_to_web() -> None:
    lines = (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
    assert all(
        line.endswith("-slim") or " AS " in line for line in lines if line.startswith("FROM")
    )
    assert any(line.startswith("USER ") and line.split()[1] != "root" for line in lines)
    [cmd] = [line for line in lines if line.startswith("CMD ")]
    assert command(yaml.safe_load(cmd.removeprefix("CMD "))) == PROCFILE["web"]


def test_k8s_manifests_have_the_expected_kinds_commands_and_probes() -> None:
    documents = manifests()
    kinds = sorted(d["kind"] for d in documents)
    assert kinds.count("Deployment") == 3
    assert {"ConfigMap", "Secret", "Service", "StatefulSet"} <= set(kinds)
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    for process in ("web", "worker", "scheduler"):
        [container] = deployments[f"halaxy-bridge-{process}"]["spec"]["template"]["spec"][
            "containers"
        ]
        assert command(container["command"]) == PROCFILE[process]
    [web] = deployments["halaxy-bridge-web"]["spec"]["template"]["spec"]["containers"]
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    [redis_conf] = [
        d for d in documents if d["kind"] == "ConfigMap" and "redis.conf" in d.get("data", {})
    ]
    assert "maxmemory-policy noeviction" in redis_conf["data"]["redis.conf"]
    assert "appendonly yes" in redis_conf["data"]["redis.conf"]


def test_metrics_stay_off_the_public_way_in_and_are_scraped_with_a_credential() -> None:
    """The Ingress routes the webhooks only; Prometheus scrapes the metrics Service, a
    ClusterIP one, with a named admin's token from a file (`/metrics` answers 401 without)."""
    documents = manifests()
    [ingress] = [d for d in documents if d["kind"] == "Ingress"]
    paths = [
        (path["path"], path["pathType"], path["backend"]["service"]["name"])
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert paths == [("/webhooks/", "Prefix", "halaxy-bridge-web")]
    services = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Service"}
    scraped = services["halaxy-bridge-web-metrics"]["spec"]
    assert scraped.get("type", "ClusterIP") == "ClusterIP"
    assert [port["name"] for port in scraped["ports"]] == ["metrics"]
    [config] = [d for d in documents if d["kind"] == "ConfigMap" and "REDIS_URL" in d["data"]]
    assert config["data"].get("BRIDGE_METRICS_PUBLIC", "false") == "false"

    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "scrape.yml").read_text())
    [job] = scrape["scrape_configs"]
    assert job["job_name"] == "halaxy-bridge"  # what BridgeMetricsDown looks for
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"].startswith("/etc/prometheus/secrets/")
    kept = [r["regex"] for r in job["relabel_configs"] if r["action"] == "keep"]
    assert "halaxy-bridge-web-metrics" in kept
