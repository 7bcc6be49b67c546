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

from alerts.rules import CHART_TEMPLATE, AlertConfig, alert_names, render_template, rule_groups
from dashboards.build import all_dashboards
from exporter import __version__
from exporter.app import settings_from_mapping
from tests.certs import TestAuthority
from tests.tools import binary

ROOT = Path(__file__).parent.parent.parent
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


def workload(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The exporter's pods' controller: a Deployment, or a StatefulSet (workload=StatefulSet)."""
    [found] = [m for m in manifests if m["kind"] in ("Deployment", "StatefulSet")]
    return found


def test_the_charts_rules_and_dashboards_are_copies_of_the_generated_ones() -> None:
    assert (ROOT / CHART_TEMPLATE).read_text() == render_template(), "helm/files is stale: run scripts/generate"
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
    deployment = workload(manifests)
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
    # The Secret is mounted at SECRET_DIR in the pod; here its files are in tmp_path. The CA and client certificate
    # mounts get real PEM files, since the exporter loads them at start.
    text = config_map["data"]["config.yml"].replace(SECRET_DIR, str(tmp_path))
    if "/etc/bitbucket-mirror-exporter/ca/" in text:
        authority = TestAuthority(tmp_path)
        client = authority.issue("exporter", server=False)
        text = text.replace("/etc/bitbucket-mirror-exporter/ca/ca.crt", str(authority.ca_file))
        text = text.replace("/etc/bitbucket-mirror-exporter/client/tls.crt", str(client.cert))
        text = text.replace("/etc/bitbucket-mirror-exporter/client/tls.key", str(client.key))
    settings = settings_from_mapping(yaml.safe_load(text))
    assert settings.mirrors or settings.git_mirrors_dir is not None


def test_a_farm_read_from_jmx_exporter_pages_needs_no_java_and_no_jmx_password() -> None:
    manifests = render(CHART / "ci/kubernetes-farm-values.yaml")
    [config_map] = of_kind(manifests, "ConfigMap")
    [mirror] = yaml.safe_load(config_map["data"]["config.yml"])["mirrors"]
    assert mirror["nodes"] == {"url_template": "http://{address}:7990"}
    assert "password_file" not in mirror["jmx"]
    [deployment] = of_kind(manifests, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(f":{__version__}"), "jmx_exporter pages need no Java runtime"


def test_replicas_taking_webhooks_each_get_their_own_dns_name() -> None:
    manifests = render(CHART / "ci/webhooks-ha-values.yaml")
    [pods] = of_kind(manifests, "StatefulSet")
    assert not of_kind(manifests, "Deployment") and pods["spec"]["replicas"] == 2
    headless = next(s for s in of_kind(manifests, "Service") if s["spec"].get("clusterIP") == "None")
    assert pods["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["selector"] == pods["spec"]["selector"]["matchLabels"]
    notes = subprocess.run(
        [str(HELM), "install", "mirrors", str(CHART), "--dry-run", "-n", "bitbucket", "-f",
         str(CHART / "ci/webhooks-ha-values.yaml")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for pod in (0, 1):
        url = f"http://{pods['metadata']['name']}-{pod}.{headless['metadata']['name']}.bitbucket.svc:9879"
        assert url + "/webhooks/bitbucket" in notes


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
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    annotations = [r["annotations"]["runbook_url"] for r in alerts]
    assert annotations and all(a.startswith("https://wiki.example.com/bitbucket/mirror-runbooks#") for a in annotations)

    dashboards = [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["labels"].get("grafana_dashboard")]
    assert len(dashboards) == len(all_dashboards())
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
    assert len(exprs) > 10  # an empty list would pass the check below
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
        # The exporter's own configuration, checked with the schema of its pydantic models.
        ("config.poll.interval_seconds=abc", "at '/config/poll/interval_seconds': got string, want number"),
        ("config.mirrors[0].nme=x", "at '/config/mirrors/0': additional properties 'nme' not allowed"),
        ("config.per_repository_metrics=some", "at '/config/per_repository_metrics'"),
        # Alert settings: durations and counts, and only alerts that exist.
        ("prometheusRule.config.lag_for=banana", "at '/prometheusRule/config/lag_for'"),
        ("prometheusRule.config.failed_syncs=-1", "at '/prometheusRule/config/failed_syncs'"),
        ("prometheusRule.config.lag_fore=5m", "additional properties 'lag_fore' not allowed"),
        ("prometheusRule.slo.freshness_threshold_seconds=301", "at '/prometheusRule/slo/freshness_threshold_seconds'"),
        ("prometheusRule.slo.freshness_objective=1.5", "at '/prometheusRule/slo/freshness_objective'"),
        ("prometheusRule.disabled.BitbucketMirrorDwn=true", "additional properties 'BitbucketMirrorDwn' not allowed"),
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


def rules_of(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    [rule] = of_kind(manifests, "PrometheusRule")
    return [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]


def test_the_charts_default_rules_are_exactly_the_generated_ones() -> None:
    manifests = render(CHART / "ci/minimal-values.yaml", "prometheusRule.enabled=true",
                       f"prometheusRule.runbookUrl={AlertConfig().runbook_url}",
                       f"grafana.url={AlertConfig().grafana_url}")  # fmt: skip
    [rule] = of_kind(manifests, "PrometheusRule")
    assert rule["spec"] == rule_groups()


def test_alerts_are_tunable_disabled_and_labelled_from_values(tmp_path: Path) -> None:
    rules = rules_of(render(
        CHART / "ci/minimal-values.yaml",
        "prometheusRule.enabled=true",
        "prometheusRule.config.lag_for=7m",
        "prometheusRule.config.lag_critical_seconds=7200",
        "prometheusRule.disabled.BitbucketMirrorMetadataDrift=true",
        "prometheusRule.additionalRuleLabels.team=scm",
    ))  # fmt: skip
    names = {r["alert"] for r in rules}
    assert names == set(alert_names()) - {"BitbucketMirrorMetadataDrift"}
    lag = [r for r in rules if r["alert"] == "BitbucketMirrorSyncLagHigh"]
    assert {r["for"] for r in lag} == {"7m"}
    assert any("lag_seconds{" in r["expr"] and "> 7200 unless" in r["expr"] for r in lag)
    assert all(r["labels"]["team"] == "scm" and r["labels"]["severity"] for r in rules)
    # Prometheus' own templates came through untouched, and promtool accepts the result.
    assert (
        "{{ $labels.mirror }}"
        in next(r for r in rules if r["alert"] == "BitbucketMirrorDown")["annotations"]["description"]
    )
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": rules}]}))
    check = subprocess.run(
        [binary("promtool", "prometheus"), "check", "rules", str(rules_file)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_runbooks_default_to_the_exporters_own_page_in_the_cluster() -> None:
    rules = rules_of(render(CHART / "ci/minimal-values.yaml", "prometheusRule.enabled=true"))
    assert len(rules) > 10  # an empty list would pass the check below
    base = "http://mirrors-bitbucket-mirror-exporter.bitbucket.svc:9879/runbooks#"
    assert all(r["annotations"]["runbook_url"] == base + r["alert"].lower() for r in rules)


def test_the_external_url_is_the_exporters_flag_and_the_runbooks_base() -> None:
    def external_url_flag(manifests: list[dict[str, Any]]) -> list[str]:
        [deployment] = of_kind(manifests, "Deployment")
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        return [a for a in args if a.startswith("--web.external-url=")]

    in_cluster = render(CHART / "ci/minimal-values.yaml", "prometheusRule.enabled=true")
    assert external_url_flag(in_cluster) == [
        "--web.external-url=http://mirrors-bitbucket-mirror-exporter.bitbucket.svc:9879"
    ]
    ingress = render(
        CHART / "ci/minimal-values.yaml", "prometheusRule.enabled=true", "webExternalUrl=https://bme.example.com/"
    )
    assert external_url_flag(ingress) == ["--web.external-url=https://bme.example.com"]
    rules = rules_of(ingress)
    assert len(rules) > 10
    assert all(
        r["annotations"]["runbook_url"] == f"https://bme.example.com/runbooks#{r['alert'].lower()}" for r in rules
    )
    bad = helm("template", "mirrors", str(CHART), "-f", str(CHART / "ci/minimal-values.yaml"),
               "--set", "webExternalUrl=bme.example.com", check=False)  # fmt: skip
    assert bad.returncode != 0 and "/webExternalUrl" in bad.stderr, bad.stderr
    # With an Ingress, its host (https with a TLS Secret), unless webExternalUrl says otherwise.
    on_ingress = render(CHART / "ci/real-install-values.yaml", "prometheusRule.enabled=true")
    [resource] = of_kind(on_ingress, "Ingress")
    host = "bitbucket-mirror-exporter.internal.example.com"
    assert resource["spec"]["rules"][0]["host"] == host and resource["spec"]["tls"][0]["hosts"] == [host]
    assert external_url_flag(on_ingress) == [f"--web.external-url=https://{host}"]
    assert all(r["annotations"]["runbook_url"].startswith(f"https://{host}/runbooks#") for r in rules_of(on_ingress))
    hostless = helm("template", "mirrors", str(CHART), "-f", str(CHART / "ci/minimal-values.yaml"),
                    "--set", "ingress.enabled=true", check=False)  # fmt: skip
    assert hostless.returncode != 0 and "ingress.host" in hostless.stderr, hostless.stderr


def test_the_slo_values_reach_the_burn_rate_rules() -> None:
    manifests = render(CHART / "ci/minimal-values.yaml", "prometheusRule.enabled=true",
                       "prometheusRule.slo.push_sync_objective=0.995",
                       "prometheusRule.slo.push_sync_threshold_seconds=300")  # fmt: skip
    [rule] = of_kind(manifests, "PrometheusRule")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    burns = [r for r in rules if r.get("alert") == "BitbucketMirrorPushSyncBudgetBurn"]
    assert len(burns) == 2 and all("(1 - 0.995)" in r["expr"] for r in burns)
    records = [r for r in rules if r.get("record", "").startswith("mirror:bitbucket_mirror_push_sync_errors")]
    assert len(records) == 4 and all("le=~`300(\\.0)?`" in r["expr"] for r in records)


def test_alerts_link_their_panel_in_grafana_only_where_grafana_is_named() -> None:
    unnamed = rules_of(render(CHART / "ci/minimal-values.yaml", "prometheusRule.enabled=true"))
    assert len(unnamed) > 10 and not any("dashboard_url" in r["annotations"] for r in unnamed)
    named = rules_of(render(CHART / "ci/minimal-values.yaml", "prometheusRule.enabled=true",
                            "grafana.url=https://grafana.example.com/"))  # fmt: skip
    assert all(r["annotations"]["dashboard_url"].startswith("https://grafana.example.com/d/bbmirror-") for r in named)


def test_the_image_repository_is_an_explicit_choice() -> None:
    result = helm("template", "mirrors", str(CHART), "--set", "config.primary.url=https://b.example.com", check=False)
    assert result.returncode != 0
    assert "image.repository is required" in result.stderr


def test_what_a_real_install_mounts_ca_web_config_extra_volumes_and_a_password_per_mirror(tmp_path: Path) -> None:
    manifests = render(CHART / "ci/real-install-values.yaml")
    [deployment] = of_kind(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["ca"]["secret"] == {
        "secretName": "corp-ca", "defaultMode": 0o444, "items": [{"key": "ca.crt", "path": "ca.crt"}]
    }  # fmt: skip
    assert mounts["ca"]["readOnly"] and mounts["client-cert"]["mountPath"] == "/etc/bitbucket-mirror-exporter/client"
    assert volumes["client-cert"]["secret"]["secretName"] == "exporter-client-cert"
    assert "--web.config.file=/etc/bitbucket-mirror-exporter/web/web-config.yml" in container["args"]
    assert volumes["web-tls"]["secret"]["secretName"] == "exporter-web-tls"
    assert {"key": "frankfurt-password", "path": "mirror-frankfurt-password"} in volumes["credentials"]["secret"][
        "items"
    ]
    [config_map] = of_kind(manifests, "ConfigMap")
    config = yaml.safe_load(config_map["data"]["config.yml"])
    assert config["tls"]["ca_file"] == "/etc/bitbucket-mirror-exporter/ca/ca.crt"
    assert config["mirrors"][1]["password_file"] == f"{SECRET_DIR}/mirror-frankfurt-password"
    assert "password_file" not in config["mirrors"][0]
    [monitor] = of_kind(manifests, "ServiceMonitor")
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"]["serverName"] == "bitbucket-mirror-exporter"
    assert endpoint["basicAuth"]["username"] == {"name": "exporter-scrape", "key": "user"}
