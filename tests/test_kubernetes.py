"""The Kubernetes manifests against the API's schemas, and against each other; the Grafana
provisioning files against the dashboards."""

import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
GRAFANA = ROOT / "deploy" / "grafana" / "provisioning"
UNIT = ROOT / "systemd" / "tcpwatch.service"


def manifests():
    return {doc["kind"]: doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text())}


@pytest.mark.parametrize("version", ["1.28.0", "1.37.0"])
@pytest.mark.parametrize("kind", ["Namespace", "DaemonSet", "Service"])
def test_core_manifests_validate_strictly(kind, version):
    kubernetes_validate.validate(manifests()[kind], version, strict=True)


# The fields of monitoring.coreos.com/v1 ServiceMonitor this project uses; unknown keys fail.
SERVICE_MONITOR = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                 "properties": {
                     "jobLabel": {"type": "string"},
                     "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}},
                                  "additionalProperties": False},
                     "namespaceSelector": {"type": "object", "additionalProperties": False,
                                           "properties": {"matchNames": {"type": "array", "items": {"type": "string"}},
                                                         "any": {"type": "boolean"}}},
                     "endpoints": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "required": ["port"], "additionalProperties": False,
                         "properties": {
                             "port": {"type": "string"}, "path": {"type": "string"},
                             "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                             "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                             "relabelings": {"type": "array", "items": {
                                 "type": "object", "additionalProperties": False,
                                 "properties": {"sourceLabels": {"type": "array"}, "targetLabel": {"type": "string"},
                                                "action": {"type": "string"}, "regex": {"type": "string"},
                                                "replacement": {"type": "string"}}}}}}}}},
    },
}


def test_service_monitor_fits_the_operator_api():
    jsonschema.validate(manifests()["ServiceMonitor"], SERVICE_MONITOR)


def test_manifests_point_at_each_other():
    m = manifests()
    pod = m["DaemonSet"]["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert m["DaemonSet"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = m["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    container = pod["spec"]["containers"][0]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["ports"][0]["targetPort"] in port_names
    monitor = m["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= m["Service"]["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["ports"][0]["name"]
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [m["Service"]["metadata"]["namespace"]]
    namespaces = {d["metadata"].get("namespace") for d in m.values() if d["kind"] != "Namespace"}
    assert namespaces == {m["Namespace"]["metadata"]["name"]}
    listen = [a for a in container["args"] if a.startswith("--web.listen-address=")]
    assert listen and listen[0].endswith(f":{port_names['metrics']}")
    kustomize = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(kustomize) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_pod_has_the_host_views_and_only_the_unit_capabilities():
    pod = manifests()["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] and pod["hostPID"] and pod["automountServiceAccountToken"] is False
    context = pod["containers"][0]["securityContext"]
    assert context["privileged"] is False and context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True and context["capabilities"]["drop"] == ["ALL"]
    unit_caps = next(line for line in UNIT.read_text().splitlines() if line.startswith("CapabilityBoundingSet="))
    unit_caps = {c.removeprefix("CAP_") for c in unit_caps.split("=", 1)[1].split()}
    assert set(context["capabilities"]["add"]) == unit_caps
    mounts = {v["mountPath"] for v in pod["containers"][0]["volumeMounts"]}
    assert "/sys/kernel/tracing" in mounts                      # the classic tracepoints' fallback
    assert not mounts & {"/lib/modules", "/usr/src", "/tmp"}    # no headers: the bundled tree


def test_grafana_provisioning_needs_no_clicks():
    sources = yaml.safe_load((GRAFANA / "datasources" / "tcpwatch.yml").read_text())["datasources"]
    assert [s["type"] for s in sources if s.get("isDefault")] == ["prometheus"]
    provider = yaml.safe_load((GRAFANA / "dashboards" / "tcpwatch.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]
    for path in (ROOT / "dashboards").glob("*.json"):
        variable = json.loads(path.read_text())["templating"]["list"][0]
        # No current value: Grafana selects the default data source of this type.
        assert variable["type"] == "datasource" and variable["query"] == "prometheus"
        assert variable["current"] == {}
