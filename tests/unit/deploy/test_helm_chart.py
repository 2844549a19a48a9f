"""The Helm chart in helm/dms-headend: lint, render, schema, fail checks, manifest validation.

These are unit tests: Helm runs in-process through helm-python-sdk (ctypes over the bundled
``libhelm_c.so``, the Helm 4 Go SDK), so no ``helm`` binary, no cluster, no network and no socket is
involved. The chart's neo4j dependency cannot be fetched offline: rendering never needs it (our
templates render with or without the subchart), and the lint test supplies a stub subchart.

Rendered manifests are validated with kubernetes-validate ``--strict`` for the oldest Kubernetes
version the chart supports and the newest one kubernetes-validate ships; the RayCluster and the
ServiceMonitor against the CRD schema subsets vendored in tests/data/k8s-schemas, with their pod
templates checked against the core PodTemplateSpec schema.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
import yaml

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
from kubernetes_validate import utils as kv_utils  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
CHART_DIR = ROOT / "helm" / "dms-headend"
CRD_SCHEMAS = ROOT / "tests" / "data" / "k8s-schemas"
RELEASE = "dms"
NAMESPACE = "grid"
RENDER_BUDGET_S = 10.0

# The least a site must supply: where Neo4j is, which Secret holds its password, the OIDC provider,
# the Ray token Secret and (with the default two replicas) the audit key Secret. Bare chart defaults
# fail on purpose (tested below).
REQUIRED: dict[str, Any] = {
    "externalNeo4j": {"uri": "neo4j+s://neo4j.graph.svc:7687", "existingSecret": "dms-neo4j"},
    "auth": {"issuer": "https://login.example.com/realms/grid", "jwksUrl": "https://login.example.com/jwks"},
    "ray": {"auth": {"existingSecret": "dms-ray-token"}},
    "audit": {"existingSecret": "dms-audit-key"},
}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


VALUE_SETS: dict[str, dict[str, Any]] = {
    "required-only": REQUIRED,
    "bundled-neo4j": merge(
        {k: v for k, v in REQUIRED.items() if k != "externalNeo4j"},
        {"neo4j": {"enabled": True, "existingSecret": "dms-neo4j",
                   "neo4j": {"name": "grid", "passwordFromSecret": "dms-neo4j"}}},
    ),
    "ingress-tls-full": merge(
        REQUIRED,
        {
            "replicaCount": 3,
            "ingress": {"enabled": True, "className": "nginx", "host": "dms.grid.example",
                        "tls": {"enabled": True, "secretName": "dms-tls"}},
            "tls": {"existingSecret": "dms-pod-tls"},
            "auth": {"jwksUrl": "", "existingSecret": "dms-jwks"},
            "opcua": {"existingSecret": "dms-opcua"},
            "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
            "externalNeo4j": {"cidrs": ["10.20.0.0/16"]},
            "networkPolicy": {
                "ingress": {"podSelectors": [{"matchLabels": {"app": "scada-gw"}}]},
                "egress": {
                    "fieldNetworks": ["10.100.0.0/16", "192.168.50.0/24"],
                    "extra": [{"to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}], "ports": [{"port": 443}]}],
                },
            },
            "config": {"corsOrigins": ["https://control.grid.example"]},
            "podDisruptionBudget": {"minAvailable": 2},
            "imagePullSecrets": ["regcred"],
            "image": {"digest": "sha256:" + "a" * 64},
        },
    ),
    "external-ray": merge(  # one replica: no audit key Secret needed
        REQUIRED,
        {"replicaCount": 1, "ray": {"enabled": False, "externalAddress": "ray://ray-head.ray.svc:10001"},
         "audit": {"existingSecret": ""}},
    ),
}


# --------------------------------------------------------------------------------------------------
# fixtures: load once, render each value set once


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def render_times() -> dict[str, float]:
    return {}


def _render(chart: Any, values: dict[str, Any]) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def _docs(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, chart: Any, render_times: dict[str, float]):
    start = time.perf_counter()
    out = _render(chart, VALUE_SETS[request.param])
    render_times[request.param] = time.perf_counter() - start
    return request.param, out, _docs(out)


@pytest.fixture(scope="module")
def minimal(chart: Any) -> tuple[dict[str, str], list[dict[str, Any]]]:
    out = _render(chart, VALUE_SETS["required-only"])
    return out, _docs(out)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# --------------------------------------------------------------------------------------------------
# Kubernetes versions: the chart's floor and the newest kubernetes-validate has offline


def _kube_floor() -> str:
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    match = re.match(r"^>=\s*(\d+\.\d+)", meta["kubeVersion"])
    assert match, "Chart.yaml kubeVersion must start with a >= floor"
    return match.group(1)


def _versions() -> list[str]:
    available = kv_utils.all_versions()  # e.g. ["1.25.0", ..., "1.37.0"]

    def mm(v: str) -> tuple[int, int]:
        major, minor = v.split(".")[:2]
        return int(major), int(minor)

    floor = mm(_kube_floor())
    supported = [v for v in available if mm(v) >= floor]
    assert supported, f"kubernetes-validate ships no schemas at or above the chart floor {floor}"
    return sorted({supported[0], supported[-1]}, key=mm)


K8S_VERSIONS = _versions()


def _pod_template_validator(version: str) -> jsonschema.Draft202012Validator:
    defs_path = (
        Path(kubernetes_validate.__file__).parent
        / "kubernetes-json-schema"
        / f"v{version}-local-strict"
        / "_definitions.json"
    )
    defs = json.loads(defs_path.read_text())
    registry = referencing.Resource.from_contents(defs) @ referencing.Registry()
    schema = {"$ref": f"{defs['$id']}#/$defs/io.k8s.api.core.v1.PodTemplateSpec"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


CRD_SCHEMA_FILES = {
    ("ray.io/v1", "RayCluster"): "raycluster-ray-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
}


def validate_manifest(doc: dict[str, Any], version: str) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMA_FILES:
        schema = json.loads((CRD_SCHEMAS / CRD_SCHEMA_FILES[key]).read_text())
        jsonschema.Draft202012Validator(schema).validate(doc)
        if doc["kind"] == "RayCluster":
            pod_validator = _pod_template_validator(version)
            pod_validator.validate(doc["spec"]["headGroupSpec"]["template"])
            for group in doc["spec"].get("workerGroupSpecs", []):
                pod_validator.validate(group["template"])
        return
    kv_utils.validate(doc, version, strict=True)


# --------------------------------------------------------------------------------------------------
# Chart.yaml and values documentation


def test_chart_declares_neo4j_dependency_with_condition() -> None:
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"]
    assert meta["kubeVersion"].startswith(">=")
    deps = {d["name"]: d for d in meta["dependencies"]}
    neo4j = deps["neo4j"]
    assert neo4j["repository"] == "https://helm.neo4j.com/neo4j"
    assert neo4j["condition"] == "neo4j.enabled"
    assert neo4j["version"]
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    # Off by default: the chart renders and installs without fetching the subchart.
    assert values["neo4j"]["enabled"] is False
    assert not (CHART_DIR / "charts").exists() or not any((CHART_DIR / "charts").glob("neo4j*"))


# Keys documented as a whole by their parent's comment (free-form Kubernetes objects / maps).
FREE_FORM = {"resources", "rayStartParams"}


def _values_key_lines() -> list[tuple[int, int, str, list[str]]]:
    """(line number, indent, key, preceding comment lines) for each mapping key in values.yaml."""
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    out = []
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z0-9_.-]+):(\s|$)", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [k for _, k in stack]
        stack.append((indent, key))
        comments = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            comments.insert(0, lines[j].strip())
            j -= 1
        out.append((i + 1, indent, key, [*parents, key, "\n".join(comments)]))
    return out


def test_every_values_key_has_a_doc_comment() -> None:
    missing = []
    for lineno, _indent, _key, path_and_comment in _values_key_lines():
        *path, comment = path_and_comment
        if any(p in FREE_FORM for p in path[:-1]):
            continue
        if not comment.startswith("# --"):
            missing.append(f"line {lineno}: {'.'.join(path)}")
    assert not missing, "values.yaml keys without a `# --` comment:\n" + "\n".join(missing)


def test_schema_types_every_values_key() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    untyped: list[str] = []

    def walk(node: Any, sch: dict[str, Any], path: str) -> None:
        if "type" not in sch and "anyOf" not in sch:
            untyped.append(path or "<root>")
            return
        if isinstance(node, dict) and sch.get("type") == "object":
            props = sch.get("properties", {})
            for key, child in node.items():
                if key in props:
                    walk(child, props[key], f"{path}.{key}".lstrip("."))
                elif isinstance(sch.get("additionalProperties"), dict):
                    walk(child, sch["additionalProperties"], f"{path}.{key}".lstrip("."))
                else:
                    untyped.append(f"{path}.{key}".lstrip("."))

    walk(values, schema, "")
    assert not untyped, f"values.yaml keys the schema does not type: {untyped}"
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(values)


# --------------------------------------------------------------------------------------------------
# lint


@pytest.fixture(scope="module")
def chart_with_stub_neo4j(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart with an empty stand-in for the neo4j subchart (fetching needs network)."""
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    dep = next(d for d in meta["dependencies"] if d["name"] == "neo4j")
    target = tmp_path_factory.mktemp("chart") / "dms-headend"
    shutil.copytree(CHART_DIR, target)
    stub = target / "charts" / "neo4j"
    stub.mkdir(parents=True)
    version = dep["version"].lstrip("~^=<> ")
    (stub / "Chart.yaml").write_text(f"apiVersion: v2\nname: neo4j\nversion: {version}\n")
    return target


@pytest.mark.parametrize("kube_version", K8S_VERSIONS)
def test_lint_strict_is_clean(chart_with_stub_neo4j: Path, kube_version: str) -> None:
    report = helm.lint(chart_with_stub_neo4j, VALUE_SETS["ingress-tls-full"], strict=True,
                       namespace=NAMESPACE, kube_version=f"v{kube_version}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


# --------------------------------------------------------------------------------------------------
# rendered manifests are valid Kubernetes objects


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_strict(rendered, version: str) -> None:
    name, _out, docs = rendered
    assert docs, name
    for doc in docs:
        try:
            validate_manifest(doc, version)
        except jsonschema.ValidationError as exc:
            pytest.fail(f"[{name}] {doc['kind']}/{doc['metadata']['name']} invalid for {version}: "
                        f"{exc.message} at {list(exc.absolute_path)}")


def test_render_time_within_budget(rendered, render_times: dict[str, float], capsys) -> None:
    name = rendered[0]
    elapsed = render_times[name]
    with capsys.disabled():
        print(f"\n[helm render] {name}: {elapsed * 1000:.1f} ms")
    assert elapsed < RENDER_BUDGET_S


def test_chart_creates_no_secret_and_notes_print_none(rendered) -> None:
    name, out, docs = rendered
    assert not by_kind(docs, "Secret"), f"[{name}] the chart must not create Secrets"
    notes = next(text for path, text in out.items() if path.endswith("NOTES.txt"))
    for leak in ("base64", "get secret", "jsonpath", "password:"):
        assert leak not in notes.lower(), f"[{name}] NOTES.txt hints at printing a secret: {leak}"
    cm = one(docs, "ConfigMap")
    secretish = [k for k in cm["data"] if re.search(r"PASSWORD|_TOKEN$|SECRET", k)]
    assert not secretish, f"[{name}] secret-looking settings in the ConfigMap: {secretish}"


def test_ray_dashboard_and_client_not_exposed(rendered) -> None:
    name, _out, docs = rendered
    for svc in by_kind(docs, "Service"):
        svc_ports = svc["spec"]["ports"]
        ports = {p["port"] for p in svc_ports} | {p.get("targetPort") for p in svc_ports}
        assert not ports & {8265, 10001, 6379, "dashboard", "client"}, f"[{name}] {svc['metadata']['name']}"
    for ing in by_kind(docs, "Ingress"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["port"] == {"name": "http"}
    for rc in by_kind(docs, "RayCluster"):
        head = rc["spec"]["headGroupSpec"]
        assert head["serviceType"] == "ClusterIP"
        assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
        containers = head["template"]["spec"]["containers"]
        exposed = {p["containerPort"] for c in containers for p in c.get("ports", [])}
        assert 8265 not in exposed


# --------------------------------------------------------------------------------------------------
# the minimal values: security posture of every pod


RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in by_kind(docs, "Deployment")]
    for rc in by_kind(docs, "RayCluster"):
        specs.append(("ray-head", rc["spec"]["headGroupSpec"]["template"]["spec"]))
        specs += [(f"ray-{g['groupName']}", g["template"]["spec"]) for g in rc["spec"]["workerGroupSpecs"]]
    return specs


def test_every_pod_is_restricted(minimal) -> None:
    _out, docs = minimal
    specs = _pod_specs(docs)
    assert len(specs) == 3  # API, Ray head, Ray workers
    for name, spec in specs:
        assert spec["automountServiceAccountToken"] is False, name  # autoscaling off by default
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        mounts = {}
        for container in spec["containers"]:
            sc = container["securityContext"]
            for key, want in RESTRICTED.items():
                assert sc[key] == want, f"{name}/{container['name']}: {key}={sc.get(key)!r}"
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, name
            assert "resources" in container and container["resources"]["limits"]["memory"], name
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], name
        for vol in volumes.values():
            assert "hostPath" not in vol, name


def test_api_deployment_probes_env_and_volumes(minimal) -> None:
    _out, docs = minimal
    dep = one(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert all(c[p]["httpGet"]["port"] == "http" for p in ("startupProbe", "livenessProbe", "readinessProbe"))
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["args"] == ["serve", "--host", "0.0.0.0"]
    assert c["envFrom"] == [{"configMapRef": {"name": "dms-dms-headend"}}]
    env = {e["name"]: e for e in c["env"]}
    assert env["DMS_NEO4J_PASSWORD_FILE"]["value"] == "/etc/dms/neo4j/password"
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert all("value" in e or "valueFrom" in e for e in c["env"])
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/var/lib/dms"]["name"] == "data"
    assert mounts["/etc/dms/neo4j"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["data"]
    assert volumes["neo4j-password"]["secret"]["secretName"] == "dms-neo4j"
    assert dep["spec"]["replicas"] == 2
    sa = one(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_audit_key_secret_is_mounted_for_every_api_replica(minimal, chart: Any, tmp_path: Path) -> None:
    """All API replicas sign one audit chain: the Secret is mounted read-only at /etc/dms/audit and
    DMS_AUDIT_KEY_FILE points at it, which the server's settings read (security/audit.py)."""
    _out, docs = minimal
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DMS_AUDIT_KEY_FILE"] == "/etc/dms/audit/audit.key"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["audit-key"] == {"name": "audit-key", "mountPath": "/etc/dms/audit", "readOnly": True}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["audit-key"]["secret"] == {"secretName": "dms-audit-key", "defaultMode": 0o440,
                                              "items": [{"key": "audit.key", "path": "audit.key"}]}
    # The variable the chart sets is the one the server reads.
    from server.settings import Settings

    key = tmp_path / "audit.key"
    key.write_text("k" * 64 + "\n")
    assert Settings.from_env({"DMS_AUDIT_KEY_FILE": str(key)}).audit_key.reveal() == "k" * 64
    # Another key name in the Secret still lands at the same path; one replica may go without it.
    other = _docs(_render(chart, merge(REQUIRED, {"audit": {"existingSecretKey": "hmac"}})))
    vol = next(v for v in one(other, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "audit-key")
    assert vol["secret"]["items"] == [{"key": "hmac", "path": "audit.key"}]
    single = _docs(_render(chart, merge(REQUIRED, {"replicaCount": 1, "audit": {"existingSecret": ""}})))
    (c1,) = one(single, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "DMS_AUDIT_KEY_FILE" not in {e["name"] for e in c1["env"]}
    assert "/etc/dms/audit" not in {m["mountPath"] for m in c1["volumeMounts"]}


def test_labels_and_names(minimal) -> None:
    _out, docs = minimal
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "dms-headend"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert len(doc["metadata"]["name"]) <= 63


def test_fullname_truncated_to_63(chart: Any) -> None:
    long_release = "r" * 53  # Helm's release-name maximum
    out = chart.render(VALUE_SETS["required-only"], name=long_release, namespace=NAMESPACE)
    for doc in _docs(out):
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]


def test_configmap_settings_and_external_neo4j(minimal) -> None:
    _out, docs = minimal
    data = one(docs, "ConfigMap")["data"]
    assert data["DMS_NEO4J_URI"] == "neo4j+s://neo4j.graph.svc:7687"
    assert data["DMS_RAY_ADDRESS"] == f"ray://dms-dms-headend-ray-head-svc.{NAMESPACE}.svc:10001"
    assert data["DMS_AUTH_JWKS_URL"] == "https://login.example.com/jwks"
    assert data["DMS_GRAPHIQL"] == "false" and data["DMS_INTROSPECTION"] == "false"
    assert data["DMS_OPCUA_ALLOW_NOSECURITY"] == "false"
    assert "DMS_OPCUA_PKI_DIR" not in data  # no certificate Secret: nothing points at an empty folder
    assert all(isinstance(v, str) for v in data.values())


# Settings the chart does not pass by name, and why: secrets arrive as files (the *_FILE twin is set
# from a mounted Secret), and the reports' folder defaults under DMS_DATA_DIR, which the chart sets.
NOT_IN_CHART = {"DMS_AUDIT_KEY": "DMS_AUDIT_KEY_FILE", "DMS_NEO4J_PASSWORD": "DMS_NEO4J_PASSWORD_FILE",
                "DMS_REPORTS_DIR": "DMS_DATA_DIR"}


def test_every_setting_the_server_reads_can_be_set_through_the_chart(minimal) -> None:
    """A new setting in server/settings.py that an admin could not set from values.yaml fails here
    (DMS_TIMEZONE and the FDIR, historian and report settings had been left out)."""
    read = set(re.findall(r'"(DMS_[A-Z0-9_]+)"', (ROOT / "server" / "settings.py").read_text()))
    chart = set(re.findall(r"DMS_[A-Z0-9_]+", "".join(p.read_text() for p in (CHART_DIR / "templates").glob("*"))))
    missing = read - chart - set(NOT_IN_CHART)
    assert not missing, f"settings the chart cannot set: {sorted(missing)}; add them to config in values.yaml"
    assert {twin for twin in NOT_IN_CHART.values()} <= chart
    data = one(minimal[1], "ConfigMap")["data"]
    assert data["DMS_TIMEZONE"] == "UTC" and data["DMS_FDIR_MODE"] == "ADVISORY" and data["DMS_FDIR_MODES"] == ""
    assert data["DMS_HISTORIAN_RETENTION_DAYS"] == "400" and data["DMS_REPORT_SCHEDULER"] == "true"


def test_the_chart_settings_parse_as_the_server_reads_them(chart: Any) -> None:
    from server.settings import Settings

    values = merge(REQUIRED, {"config": {"timezone": "America/Chicago", "fdirModes": ["f1:AUTOMATIC", "f2:OFF"],
                                         "historianFlushS": 5.0}})
    data = one(_docs(_render(chart, values)), "ConfigMap")["data"]
    s = Settings.from_env({k: v for k, v in data.items() if k.startswith("DMS_")
                           and k not in ("DMS_DATA_DIR", "DMS_HOST")})
    assert str(s.timezone) == "America/Chicago" and s.historian_flush_s == 5.0
    assert dict(s.fdir_modes) == {"f1": "AUTOMATIC", "f2": "OFF"}


def test_network_policy_minimal(minimal) -> None:
    _out, docs = minimal
    policies = {p["metadata"]["name"]: p for p in by_kind(docs, "NetworkPolicy")}
    api = policies["dms-dms-headend"]["spec"]
    assert api["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = api["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    egress_ports = {p["port"] for r in api["egress"] for p in r.get("ports", [])}
    assert egress_ports == {53, 7687, 6379, 10001}
    ray = policies["dms-dms-headend-ray"]["spec"]
    outside = [r for r in ray["ingress"] if "ports" in r]
    assert {p["port"] for r in outside for p in r["ports"]} == {6379, 10001}


# --------------------------------------------------------------------------------------------------
# other value sets


def _render_set(chart: Any, name: str) -> list[dict[str, Any]]:
    return _docs(_render(chart, VALUE_SETS[name]))


def test_bundled_neo4j_points_at_the_subchart(chart: Any) -> None:
    docs = _render_set(chart, "bundled-neo4j")
    data = one(docs, "ConfigMap")["data"]
    assert data["DMS_NEO4J_URI"] == f"neo4j://dms-neo4j.{NAMESPACE}.svc:7687"
    api = next(p for p in by_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == "dms-dms-headend")
    bolt = [r for r in api["spec"]["egress"] if {"port": 7687, "protocol": "TCP"} in r.get("ports", [])]
    assert bolt[0]["to"] == [{"podSelector": {"matchLabels": {"helm.neo4j.com/instance": "dms-neo4j"}}}]


def test_ingress_tls_pod_tls_and_service_monitor(chart: Any) -> None:
    docs = _render_set(chart, "ingress-tls-full")
    ing = one(docs, "Ingress")
    assert ing["spec"]["tls"] == [{"hosts": ["dms.grid.example"], "secretName": "dms-tls"}]
    assert ing["spec"]["ingressClassName"] == "nginx"
    dep = one(docs, "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert c["image"] == "ghcr.io/example/dms-headend@sha256:" + "a" * 64
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DMS_TLS_CERT_FILE"] == "/etc/dms/tls/tls.crt"
    assert env["DMS_AUTH_JWKS_FILE"] == "/etc/dms/auth/jwks.json"
    assert "DMS_AUTH_JWKS_URL" not in one(docs, "ConfigMap")["data"]
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/etc/dms/opcua", "/etc/dms/tls", "/etc/dms/auth"}
    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["scheme"] == "https"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    api = next(p for p in by_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == "dms-dms-headend")
    field = [r for r in api["spec"]["egress"] if {"port": 502, "protocol": "TCP"} in r.get("ports", [])]
    assert field and {b["ipBlock"]["cidr"] for b in field[0]["to"]} == {"10.100.0.0/16", "192.168.50.0/24"}
    assert {"port": 4840, "protocol": "TCP"} in field[0]["ports"]
    assert any(r.get("ports") == [{"port": 443}] for r in api["spec"]["egress"])
    worker = one(docs, "RayCluster")["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert "/etc/dms/opcua" in {m["mountPath"] for m in worker["containers"][0]["volumeMounts"]}
    assert one(docs, "ConfigMap")["data"]["DMS_OPCUA_PKI_DIR"] == "/etc/dms/opcua"  # the mount is what is used


def test_ray_autoscaling_gets_a_token_only_on_the_head(chart: Any) -> None:
    docs = _docs(_render(chart, merge(REQUIRED, {"ray": {"enableInTreeAutoscaling": True}})))
    rc = one(docs, "RayCluster")["spec"]
    assert rc["enableInTreeAutoscaling"] is True
    assert rc["headGroupSpec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert rc["workerGroupSpecs"][0]["template"]["spec"]["automountServiceAccountToken"] is False


def test_feeder_actors_run_at_normal_priority(minimal) -> None:
    """Ray starts workers at nice 15; the feeder actors on them do the real-time work."""
    _out, docs = minimal
    worker = one(docs, "RayCluster")["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert {"name": "RAY_worker_niceness", "value": "0"} in worker["env"]


def test_external_ray_renders_no_raycluster(chart: Any) -> None:
    docs = _render_set(chart, "external-ray")
    assert not by_kind(docs, "RayCluster")
    assert not by_kind(docs, "PodDisruptionBudget")  # one replica, PDB not enabled
    assert one(docs, "ConfigMap")["data"]["DMS_RAY_ADDRESS"] == "ray://ray-head.ray.svc:10001"
    assert [p["metadata"]["name"] for p in by_kind(docs, "NetworkPolicy")] == ["dms-dms-headend"]


# --------------------------------------------------------------------------------------------------
# refusals: schema and cross-field fail checks


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"replicas": 2}, "additional properties 'replicas'"),
        ({"image": {"tags": "1.0"}}, "/image"),
        ({"service": {"port": 70000}}, "/service/port"),
        ({"config": {"logLevel": "VERBOSE"}}, "/config/logLevel"),
        ({"config": {"graphiql": "yes"}}, "/config/graphiql"),
        (
            {"networkPolicy": {"egress": {"fieldNetworks": ["10.0.0.0"]}}},
            "/networkPolicy/egress/fieldNetworks",
        ),
        ({"ray": {"head": {"rayStartParams": {"num-cpus": 0}}}}, "/ray/head/rayStartParams"),
        ({"ray": {"worker": {"replicas": "3"}}}, "/ray/worker/replicas"),
        ({"externalNeo4j": {"uri": "http://neo4j:7474"}}, "/externalNeo4j/uri"),
        ({"auth": {"jwksUrl": "http://idp/jwks"}}, "/auth/jwksUrl"),
        ({"audit": {"existingSecretKey": "keys/audit"}}, "/audit/existingSecretKey"),
        ({"audit": {"existingSecret": "Audit_Key"}}, "/audit/existingSecret"),
        ({"audit": {"key": "inline"}}, "additional properties 'key'"),
    ],
)
def test_schema_refuses(chart: Any, override: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        _render(chart, merge(REQUIRED, override))
    assert where in str(err.value)


FAILS = [
    pytest.param({"replicaCount": 0, "podDisruptionBudget": {"enabled": True}},
                 "Set replicaCount to 2 or more, or podDisruptionBudget.enabled=false",
                 id="pdb-zero-replicas"),
    pytest.param({"replicaCount": 1, "podDisruptionBudget": {"enabled": True}},
                 "Lower podDisruptionBudget.minAvailable or raise replicaCount", id="pdb-blocks-drain"),
    pytest.param({"ingress": {"enabled": True, "tls": {"enabled": True, "secretName": ""}}},
                 "set ingress.tls.secretName", id="ingress-tls-no-secret"),
    pytest.param({"externalNeo4j": {"password": "hunter2"}},
                 "set externalNeo4j.existingSecret", id="inline-password"),
    pytest.param({"neo4j": {"enabled": True, "existingSecret": "s", "neo4j": {"password": "hunter2"}}},
                 "set neo4j.existingSecret and neo4j.neo4j.passwordFromSecret",
                 id="inline-subchart-password"),
    pytest.param({"externalNeo4j": {"uri": ""}}, "set externalNeo4j.uri", id="no-graph-store"),
    pytest.param({"externalNeo4j": {"existingSecret": ""}},
                 "set externalNeo4j.existingSecret=dms-neo4j", id="no-neo4j-secret"),
    pytest.param({"neo4j": {"enabled": True}}, "set neo4j.existingSecret", id="bundled-neo4j-no-secret"),
    pytest.param({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
                 "set metrics.enabled=true", id="servicemonitor-without-metrics"),
    pytest.param({"auth": {"jwksUrl": ""}}, "set auth.jwksUrl", id="no-identity"),
    pytest.param({"auth": {"issuer": ""}}, "set it to the `iss`", id="no-issuer"),
    pytest.param({"ray": {"auth": {"existingSecret": ""}}}, "set ray.auth.existingSecret", id="ray-no-token"),
    pytest.param({"audit": {"existingSecret": ""}}, "set audit.existingSecret=dms-audit-key, or set replicaCount=1",
                 id="replicas-without-audit-key"),
    pytest.param({"replicaCount": 3, "podDisruptionBudget": {"minAvailable": 2}, "audit": {"existingSecret": ""}},
                 "audit.existingSecret is empty with replicaCount 3", id="three-replicas-without-audit-key"),
    pytest.param({"historian": {"s3": {"existingSecret": "dms-historian-s3"}}}, "set historian.uri=s3://",
                 id="historian-s3-secret-without-s3-uri"),
    pytest.param({"historian": {"uri": "s3://bkt/p?endpoint_override=m:9000", "s3": {"endpoint": "http://m:9000"}}},
                 "give the endpoint once, in historian.s3.endpoint", id="historian-endpoint-twice"),
    pytest.param({"ray": {"enabled": False}}, "set ray.externalAddress", id="no-ray"),
    pytest.param({"ray": {"worker": {"minReplicas": 5, "maxReplicas": 2}}}, "raise maxReplicas",
                 id="ray-min-max"),
]


@pytest.mark.parametrize(("override", "fix"), FAILS)
def test_cross_field_mistakes_fail_with_the_fix(chart: Any, override: dict[str, Any], fix: str) -> None:
    with pytest.raises(helm.HelmRenderError) as err:
        _render(chart, merge(REQUIRED, override))
    assert fix in str(err.value)


def test_bare_defaults_fail_naming_what_to_set(chart: Any) -> None:
    with pytest.raises(helm.HelmRenderError) as err:
        _render(chart, {})
    assert "externalNeo4j.uri" in str(err.value)


def test_validators_catch_mistakes(minimal) -> None:
    """The strict validation above is not vacuous: typos in core and CRD objects are refused."""
    _out, docs = minimal
    version = K8S_VERSIONS[0]
    dep = copy.deepcopy(one(docs, "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    rc = copy.deepcopy(one(docs, "RayCluster"))
    rc["spec"]["workerGroupSpecs"][0]["replica"] = 3
    rc_pod = copy.deepcopy(one(docs, "RayCluster"))
    rc_pod["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 7
    for broken in (dep, rc, rc_pod):
        with pytest.raises(jsonschema.ValidationError):
            validate_manifest(broken, version)


def test_ray_pods_declare_only_ports_the_network_policy_lets_in(minimal) -> None:
    """KubeRay builds the head Service from the head container's ports (plus its metrics port,
    8080, which only Ray pods may reach): a port declared there but not allowed by the Ray
    NetworkPolicy would be a Service port nobody outside can use, or, worse, one the policy forgot."""
    _out, docs = minimal
    policies = {p["metadata"]["name"]: p for p in by_kind(docs, "NetworkPolicy")}
    ray_policy = policies["dms-dms-headend-ray"]["spec"]
    allowed = {p["port"] for r in ray_policy["ingress"] if "ports" in r for p in r["ports"]}
    (rc,) = by_kind(docs, "RayCluster")
    head = rc["spec"]["headGroupSpec"]
    declared = {p["containerPort"] for c in head["template"]["spec"]["containers"] for p in c.get("ports", [])}
    assert declared == allowed == {6379, 10001}
    for group in rc["spec"]["workerGroupSpecs"]:
        assert all(not c.get("ports") for c in group["template"]["spec"]["containers"]), group["groupName"]
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert head["serviceType"] == "ClusterIP"


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_historian_s3_root_and_credentials_reach_the_api_and_the_ray_workers(chart: Any) -> None:
    """The actors (Ray workers) write the data set and the API reads it: both get the S3 keys from the
    existing Secret by secretKeyRef, under the names the S3 client reads; the endpoint lands in
    DMS_HISTORIAN_URI in the form graph_schema.historian.writer.open_root parses."""
    values = merge(REQUIRED, {"historian": {"uri": "s3://dms-history/prod?region=eu-west-1", "s3": {
        "existingSecret": "dms-historian-s3", "endpoint": "http://minio.storage.svc:9000"}}})
    docs = _docs(_render(chart, values))
    uri = one(docs, "ConfigMap")["data"]["DMS_HISTORIAN_URI"]
    assert uri == "s3://dms-history/prod?region=eu-west-1&endpoint_override=minio.storage.svc:9000&scheme=http"
    (api,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    rc = one(docs, "RayCluster")
    workers = [c for g in rc["spec"]["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]]
    assert workers
    for c in (api, *workers):
        env = _env(c)
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "dms-historian-s3", "key": key}}}
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage.svc:9000"
    # The settings take the URI as it is, and the historian's S3 client gets the endpoint from it.
    from graph_schema.historian.writer import open_root
    from server.settings import Settings

    assert Settings.from_env({"DMS_HISTORIAN_URI": uri}).historian_root == uri
    fs, base = open_root(uri)
    opts = fs.__reduce__()[1][0]
    assert (opts["endpoint_override"], opts["scheme"], opts["region"], base) == (
        "minio.storage.svc:9000", "http", "eu-west-1", "dms-history/prod")
    # On AWS (no endpoint) the URI stays as given: "?" starts the options the chart adds.
    aws = _docs(_render(chart, merge(REQUIRED, {"historian": {"uri": "s3://dms-history/prod"}})))
    assert one(aws, "ConfigMap")["data"]["DMS_HISTORIAN_URI"] == "s3://dms-history/prod"
    minio = _docs(_render(chart, merge(REQUIRED, {"historian": {"uri": "s3://hist", "s3": {"endpoint": "https://s3.lan"}}})))
    assert one(minio, "ConfigMap")["data"]["DMS_HISTORIAN_URI"] == "s3://hist?endpoint_override=s3.lan&scheme=https"


def test_historian_defaults_to_the_data_directory(minimal) -> None:
    """No historian values: no DMS_HISTORIAN_URI (the server uses <data dir>/historian), no S3 env."""
    _out, docs = minimal
    assert "DMS_HISTORIAN_URI" not in one(docs, "ConfigMap")["data"]
    (api,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    groups = one(docs, "RayCluster")["spec"]["workerGroupSpecs"]
    workers = [c for g in groups for c in g["template"]["spec"]["containers"]]
    for c in (api, *workers):
        assert not [k for k in _env(c) if k.startswith("AWS_")]
