"""The Helm chart, with the real helm binary (scripts/install-helm): lint, render each helm/ci/ values file, validate
the manifests against the Kubernetes schema, check the rendered rules with promtool and the rendered exporter config
with the exporter's own validation, and reject bad values with a clear message."""

from __future__ import annotations

import base64
import filecmp
import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from exporter import __version__
from exporter.config import settings_from_mapping
from tests.monitoring_stack import binary

ROOT = Path(__file__).parent.parent
CHART = ROOT / "helm"
HELM = ROOT / ".tools" / "bin" / "helm"
VALUES = sorted((CHART / "ci").glob("*.yaml"))
SECRET_DIR = "/etc/bitbucket-mirror-exporter/secrets"
# Custom resources of the Prometheus Operator: not in the Kubernetes schema, checked on their own below.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        pytest.fail(f"{HELM} missing: run scripts/install-helm (scripts/bootstrap does)")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60, check=check)


def render(values: Path | None = None, *sets: str) -> list[dict[str, Any]]:
    args = ["template", "mirrors", str(CHART), "--namespace", "bitbucket"]
    if values is not None:
        args += ["-f", str(values)]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def of_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def test_the_charts_rules_and_dashboards_are_copies_of_the_generated_ones() -> None:
    assert filecmp.cmp(ROOT / "alerts/bitbucket-mirror.rules.yml", CHART / "files/bitbucket-mirror.rules.yml", False), (
        "helm/files is stale: run scripts/sync-chart"
    )
    sources = sorted(p.name for p in (ROOT / "dashboards/generated").glob("*.json"))
    assert sorted(p.name for p in (CHART / "files/dashboards").glob("*.json")) == sources
    for name in sources:
        assert filecmp.cmp(ROOT / "dashboards/generated" / name, CHART / "files/dashboards" / name, False), name


def test_chart_metadata_matches_the_exporter() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["appVersion"] == __version__
    assert chart["kubeVersion"] and chart["maintainers"] and chart["version"]


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_helm_lint_strict(values: Path) -> None:
    result = helm("lint", "--strict", str(CHART), "-f", str(values), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_rendered_manifests_are_valid_kubernetes(values: Path) -> None:
    version = latest_version()
    for manifest in render(values):
        if manifest["kind"] in OPERATOR_KINDS:
            assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{values.stem}: {manifest['kind']} {manifest['metadata']['name']}: {exc.message}")


def _secret_files(manifests: list[dict[str, Any]], into: Path) -> None:
    """Writes what the pod would see under the Secret mount; for an existing Secret, stand-in files."""
    [deployment] = of_kind(manifests, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    if "credentials" not in volumes:
        return
    secrets = {s["metadata"]["name"]: s for s in of_kind(manifests, "Secret")}
    secret = secrets.get(volumes["credentials"]["secret"]["secretName"])
    for item in volumes["credentials"]["secret"]["items"]:
        data = base64.b64decode(secret["data"][item["key"]]) if secret else b"from-the-existing-secret"
        (into / item["path"]).write_bytes(data)


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_the_rendered_exporter_config_passes_the_exporters_validation(values: Path, tmp_path: Path) -> None:
    manifests = render(values)
    [config_map] = [m for m in of_kind(manifests, "ConfigMap") if "config.yml" in m["data"]]
    _secret_files(manifests, tmp_path)
    # The Secret is mounted at SECRET_DIR in the pod; here its files are in tmp_path.
    text = config_map["data"]["config.yml"].replace(SECRET_DIR, str(tmp_path))
    settings = settings_from_mapping(yaml.safe_load(text))
    assert settings.mirrors


def test_secrets_reach_the_exporter_as_files_never_in_the_config_map() -> None:
    manifests = render(CHART / "ci/jmx-values.yaml")
    [config_map] = of_kind(manifests, "ConfigMap")
    config = yaml.safe_load(config_map["data"]["config.yml"])
    assert config["primary"]["password_file"] == f"{SECRET_DIR}/password"
    assert config["mirrors"][0]["jmx"]["password_file"] == f"{SECRET_DIR}/jmxPassword"
    assert "jmx" not in config["mirrors"][1]
    assert "not-a-real" not in json.dumps(config_map)
    [deployment] = of_kind(manifests, "Deployment")
    # Not even hashed into an annotation: a password's checksum can be brute-forced offline.
    assert "not-a-real" not in json.dumps(deployment)
    assert "checksum/credentials" not in json.dumps(deployment)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(f":{__version__}-jmx"), "JMX needs the image variant with Java"
    [plain] = of_kind(render(CHART / "ci/minimal-values.yaml"), "Deployment")
    assert plain["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":{__version__}")

    existing_secret = render(CHART / "ci/existing-secret-values.yaml")
    assert not of_kind(existing_secret, "Secret")
    [existing] = of_kind(existing_secret, "Deployment")
    credentials = next(v for v in existing["spec"]["template"]["spec"]["volumes"] if v["name"] == "credentials")
    assert credentials["secret"] == {
        "secretName": "bitbucket-monitoring",
        "defaultMode": 0o400,
        "items": [{"key": "bitbucket-password", "path": "password"}],
    }


def test_safe_defaults() -> None:
    [deployment] = of_kind(render(CHART / "ci/minimal-values.yaml"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert "resources" not in container, "no default requests or limits"


def test_prometheus_operator_resources(tmp_path: Path) -> None:
    manifests = render(CHART / "ci/monitoring-values.yaml")
    [service] = of_kind(manifests, "Service")
    [monitor] = of_kind(manifests, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("60s", "15s")
    assert endpoint["relabelings"][0]["targetLabel"] == "node_name"
    # The job label comes from the Service's app.kubernetes.io/name, which the rules' default selector matches.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "bitbucket-mirror-exporter"

    [rule] = of_kind(manifests, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    check = subprocess.run(
        [binary("promtool", "prometheus"), "check", "rules", str(rules_file)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    annotations = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert annotations and all(a.startswith("https://wiki.example.com/bitbucket/mirror-runbooks#") for a in annotations)

    dashboards = [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["labels"].get("grafana_dashboard")]
    assert len(dashboards) == 4
    for dashboard in dashboards:
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Bitbucket mirrors"}
        [(name, text)] = dashboard["data"].items()
        assert json.loads(text) == json.loads((ROOT / "dashboards/generated" / name).read_text())
    [policy] = of_kind(manifests, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_the_rule_selector_can_be_changed() -> None:
    [rule] = of_kind(render(CHART / "ci/monitoring-values.yaml", 'prometheusRule.selector=job="bb"'), "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert all('job="bb"' in e and "bitbucket-mirror-exporter.*" not in e for e in exprs)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("replicaCount=two", "at '/replicaCount': got string, want integer"),
        ("bogus=1", "additional properties 'bogus' not allowed"),
        ("serviceMonitor.enabled=yes", "at '/serviceMonitor/enabled': got string, want boolean"),
        ("service.port=70000", "at '/service/port'"),
        ("logLevel=verbose", "at '/logLevel'"),
        ("credentials.pasword=x", "additional properties 'pasword' not allowed"),
    ],
)
def test_bad_values_fail_the_schema_with_a_clear_message(setting: str, message: str) -> None:
    result = helm("template", "mirrors", str(CHART), "-f", str(CHART / "ci/minimal-values.yaml"), "--set", setting,
                  check=False)  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_the_kubernetes_validation_notices_a_misspelt_field() -> None:
    [deployment] = of_kind(render(CHART / "ci/minimal-values.yaml"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="securityContxt"):
        kubernetes_validate.validate(deployment, latest_version(), strict=True)
