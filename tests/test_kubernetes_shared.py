"""deploy/kubernetes/shared/: the proxy as a shared Deployment for teams, validated offline
like the sidecar manifests (schemas, pod security, wiring between the objects and the config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.config import load_yaml, parse_config
from tests.test_kubernetes import K8S_VERSION

SHARED = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes" / "shared"
FILES = sorted(p.name for p in SHARED.glob("*.yaml"))


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((SHARED / name).read_text()) if d]


def one(name: str, kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs(name) if d["kind"] == kind]
    return doc


def config() -> Any:
    raw = load_yaml(one("configmap.yaml", "ConfigMap")["data"]["config.yaml"])  # as the proxy
    return parse_config(raw, env={})


@pytest.mark.parametrize("name", FILES)
def test_every_object_matches_the_kubernetes_schema(name: str) -> None:
    for doc in docs(name):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", ["deployment.yaml", "redis.yaml"])
def test_restricted_pod_security(name: str) -> None:
    spec = one(name, "Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["runAsUser"] != 0


def test_the_deployment_the_service_the_policy_and_the_config_agree() -> None:
    cfg = config()
    deployment = one("deployment.yaml", "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 3
    [proxy] = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports == {"https": cfg.listen.port, "admin": cfg.admin.port}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    mounts = {m["mountPath"] for m in proxy["volumeMounts"]}
    assert cfg.listen.tls is not None
    files = [cfg.listen.tls.cert_file, *(c.token.location for c in cfg.listen.clients)]
    assert cfg.shared is not None and cfg.shared.password is not None
    files += [cfg.shared.password.location, *(r.tokens[0].location for r in cfg.routes)]
    for path in files:
        assert str(Path(path).parent) in mounts, path
    service = one("service.yaml", "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    policy = one("networkpolicy.yaml", "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    [clients, monitoring] = policy["spec"]["ingress"]
    assert [p["port"] for p in clients["ports"]] == [cfg.listen.port]
    assert [p["port"] for p in monitoring["ports"]] == [cfg.admin.port]
    pdb = one("pdb.yaml", "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert cfg.shutdown_timeout + 1 <= grace


def test_the_config_is_a_network_service() -> None:
    cfg = config()
    assert cfg.listen.host == "0.0.0.0"  # noqa: S104 (a Service in front of it)
    assert cfg.listen.tls is not None and cfg.listen.clients
    assert all(r.clients for r in cfg.routes)  # every route names its clients
    assert all(r.rate_limit is not None and r.rate_limit.store == "shared" for r in cfg.routes)
    redis = one("redis.yaml", "Service")
    assert cfg.shared is not None
    assert f"{redis['metadata']['name']}.{redis['metadata']['namespace']}.svc" in cfg.shared.url
    assert "EXAMPLE ONLY" in (SHARED / "redis.yaml").read_text()
