"""deploy/kubernetes/ validated offline: Kubernetes schemas, the restricted Pod Security profile,
probes, mounts, resources from the benchmark, and custom resources' shape."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.config import load_yaml, parse_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.29.0"  # native sidecars need 1.29+
STANDARD = ("configmap.yaml", "secret.yaml", "native-sidecar.yaml", "classic-sidecar.yaml")
WORKLOADS = ("native-sidecar.yaml", "classic-sidecar.yaml")


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
    return doc


def pod_spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = load(name)["spec"]["template"]["spec"]
    return spec


def proxy_container(name: str) -> dict[str, Any]:
    spec = pod_spec(name)
    containers = spec.get("initContainers", []) + spec["containers"]
    return next(c for c in containers if c["name"] == "amperity-proxy")


def proxy_config() -> Any:
    return parse_config(load_yaml(load("configmap.yaml")["data"]["config.yaml"]), env={})


@pytest.mark.parametrize("name", STANDARD)
def test_manifest_matches_the_kubernetes_schema(name: str) -> None:
    kubernetes_validate.validate(load(name), K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", WORKLOADS)
def test_restricted_pod_security_and_read_only_root(name: str) -> None:
    spec = pod_spec(name)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    allowed_volumes = {"configMap", "secret", "emptyDir", "projected", "downwardAPI"}
    for volume in spec["volumes"]:
        assert set(volume) - {"name"} <= allowed_volumes, volume
    for container in spec.get("initContainers", []) + spec["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
        assert context["readOnlyRootFilesystem"] is True
        assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert proxy_container(name)["securityContext"]["runAsUser"] == 65532  # the image's USER


@pytest.mark.parametrize("name", WORKLOADS)
def test_probes_mounts_and_app_wiring(name: str) -> None:
    proxy = proxy_container(name)
    config = proxy_config()
    [port] = proxy["ports"]
    assert (port["name"], port["containerPort"]) == ("admin", config.admin.port)
    assert config.admin.host == "0.0.0.0"  # noqa: S104 (the kubelet probes from outside the pod)
    assert str(config.listen) == "127.0.0.1:8080"  # the token stays inside the pod
    assert proxy["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "admin"}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert proxy["args"][:3] == ["run", "--config", "/etc/amperity-proxy/config.yaml"]
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    assert not any("subPath" in m for m in proxy["volumeMounts"])  # subPath never updates
    token_path = Path(config.routes[0].tokens[0].location)
    assert str(token_path.parent) in mounts and str(Path("/etc/amperity-proxy")) in mounts
    assert all(m["readOnly"] for m in mounts.values())
    app = next(c for c in pod_spec(name)["containers"] if c["name"] != "amperity-proxy")
    urls = [e["value"] for e in app["env"] if e["value"].startswith("http://")]
    assert urls == [f"http://127.0.0.1:{config.listen.port}{config.routes[0].prefix}"]


def test_native_sidecar_is_an_init_container_that_keeps_running() -> None:
    spec = pod_spec("native-sidecar.yaml")
    [sidecar] = spec["initContainers"]
    assert (sidecar["name"], sidecar["restartPolicy"]) == ("amperity-proxy", "Always")


def test_classic_sidecar_outlives_the_app() -> None:
    """No preStop sleep (the image has no shell): --shutdown-delay keeps the proxy serving
    while the app finishes, and the whole stop fits the grace period."""
    proxy = proxy_container("classic-sidecar.yaml")
    assert "lifecycle" not in proxy
    args = proxy["args"]
    delay = float(args[args.index("--shutdown-delay") + 1])
    grace = pod_spec("classic-sidecar.yaml")["terminationGracePeriodSeconds"]
    # SIGTERM -> exit within shutdown_delay + shutdown_timeout + 1 s
    # (tests/test_sidecar_lifecycle.py proves it).
    assert delay + proxy_config().shutdown_timeout + 1 < grace
    comment = (ROOT / "deploy/kubernetes/classic-sidecar.yaml").read_text()
    budget = f"{delay:g} + {proxy_config().shutdown_timeout:g} + 1 < {grace}"
    assert budget in comment, "the comment's timing is out of date"


def test_native_sidecar_exits_within_its_grace_period() -> None:
    grace = pod_spec("native-sidecar.yaml")["terminationGracePeriodSeconds"]
    assert proxy_config().shutdown_timeout + 1 < grace


def _idle_rss_mib() -> float:
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    match = re.search(r"\| RSS at idle \(proxy / reference\) \| ([\d.]+) /", results)
    assert match, "bench/RESULTS.md has no idle RSS figure"
    return float(match.group(1))


def _mib(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * (1024 if unit == "Gi" else 1)


@pytest.mark.parametrize("name", WORKLOADS)
def test_resources_follow_the_benchmark(name: str) -> None:
    resources = proxy_container(name)["resources"]
    idle = _idle_rss_mib()
    assert _mib(resources["requests"]["memory"]) >= idle
    assert _mib(resources["limits"]["memory"]) >= 2 * idle  # room for streams and connections
    assert "cpu" in resources["requests"] and "cpu" not in resources.get("limits", {})


def test_pod_monitor_selects_the_sidecar_pods() -> None:
    monitor = load("podmonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    for name in WORKLOADS:
        labels = load(name)["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("admin", "/metrics")
    # kube-prometheus-stack selects monitors and rules by its release label; pods in any
    # namespace, not only the monitor's own
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert load("prometheusrule.yaml")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert "podMonitorSelectorNilUsesHelmValues" in (DEPLOY / "podmonitor.yaml").read_text()


def test_every_alert_aggregates_across_pods_and_has_a_runbook() -> None:
    """A token expiring in a 20-pod Deployment is one alert, not twenty: no rule keeps `pod`;
    every runbook anchor exists in docs/alerts.md and names the alert."""
    rules = load("rules/amperity-proxy.rules.yaml")["groups"][0]["rules"]
    runbooks = (ROOT / "docs" / "alerts.md").read_text()
    anchors = {f"#{m.lower()}" for m in re.findall(r"^## (\w+)", runbooks, re.M)}
    for rule in rules:
        expr = rule["expr"]
        assert re.search(r"\b(min|max|sum|count) by \(namespace", expr), rule["alert"]
        assert "pod" not in re.findall(r"by \(([^)]*)\)", expr)[0], rule["alert"]
        runbook = rule["annotations"]["runbook"]
        assert runbook.startswith("docs/alerts.md#") and runbook[len("docs/alerts.md") :] in anchors


def test_prometheus_rule_embeds_the_tested_rules() -> None:
    rule = load("prometheusrule.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == load("rules/amperity-proxy.rules.yaml")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    for name in (
        "AmperityTokenExpiresWithin7Days",
        "AmperityTokenExpiresWithin1Day",
        "AmperityTokenExpired",
        "AmperityUpstreamUnauthorized",
        "AmperityTokenLoadErrors",
        "AmperityProxyNotReady",
    ):
        assert name in alerts
        assert alerts[name]["labels"]["severity"] in ("warning", "critical")
    assert alerts["AmperityTokenExpiresWithin7Days"]["labels"]["severity"] == "warning"
    assert alerts["AmperityTokenExpiresWithin1Day"]["labels"]["severity"] == "critical"
