"""deploy/k8s/ against the Kubernetes API schemas and the KServe CRD fields (issue 12).

* Every core manifest validates, strictly (unknown fields are errors), against the OpenAPI
  schemas of the Kubernetes versions the manifests target (K8S_VERSIONS), offline, with the
  ``kubernetes-validate`` package (it ships the schemas).
* ``kustomize build deploy/k8s`` (``kustomize`` or ``kubectl kustomize``, where one is on
  PATH) renders exactly the resources the kustomization lists, all in namespace ``textclf``,
  and the rendered objects validate as well.
* The KServe ServingRuntime / InferenceService match the KServe CRD fields we use
  (tests/deploy/data/kserve_crd_fields.schema.yaml, with its source), and the core/v1 Container and
  PodSpec parts KServe inlines validate against the Kubernetes schema.
Each check is also run on a deliberately broken copy, which must fail.
"""
from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.deploy_env import REPO

K8S = REPO / "deploy" / "k8s"
KSERVE_SCHEMA = REPO / "tests" / "deploy" / "data" / "kserve_crd_fields.schema.yaml"
# The oldest Kubernetes the manifests target (docs/deployment.md) and the newest whose schemas
# kubernetes-validate ships.
OLDEST_TARGET = "1.29"
K8S_VERSIONS = (OLDEST_TARGET, kubernetes_validate.latest_version())
NOT_CORE = ("kustomize.config.k8s.io/", "serving.kserve.io/")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def core_manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml")) for doc in documents(path)
            if not doc["apiVersion"].startswith(NOT_CORE)]


def kserve_manifests() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for path in sorted(K8S.glob("kserve-*.yaml")) for doc in documents(path)}


def validate(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_target_versions_are_documented() -> None:
    text = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert f"Kubernetes {OLDEST_TARGET}" in text, "docs/deployment.md must state the oldest targeted version"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_manifests_validate_against_the_kubernetes_api(version: str) -> None:
    manifests = core_manifests()
    assert {doc["kind"] for _, doc in manifests} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "Job",
                                                     "PersistentVolumeClaim", "Namespace", "ConfigMap"}
    for name, doc in manifests:
        try:
            validate(doc, version)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"deploy/k8s/{name} {doc['kind']}: {exc.message} at {'.'.join(map(str, exc.path))}")


@pytest.mark.parametrize("break_it", [
    lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSecond=15),  # typo: unknown field
    lambda d: d["spec"].update(replicas="two"),  # wrong type
    lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),  # required field
], ids=["unknown-field", "wrong-type", "missing-required"])
def test_a_broken_deployment_fails_validation(break_it: Any) -> None:
    deployment = next(doc for _, doc in core_manifests() if doc["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    break_it(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken, K8S_VERSIONS[-1])


def kustomize_command() -> list[str]:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    pytest.skip("no kustomize and no kubectl on PATH (neither is packaged for Debian 12 or on PyPI)")


def test_kustomize_renders_the_listed_resources_into_the_namespace() -> None:
    command = kustomize_command()
    done = subprocess.run([*command, str(K8S)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    expected = sorted((doc["kind"], doc["metadata"]["name"]) for name in listed["resources"]
                      for doc in documents(K8S / name))
    assert sorted((doc["kind"], doc["metadata"]["name"]) for doc in rendered) == expected
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == listed["namespace"], doc["metadata"]
        for version in K8S_VERSIONS:
            validate(doc, version)


# --------------------------------------------------------------------------------- KServe
def kserve_schema(kind: str) -> dict[str, Any]:
    schema = yaml.safe_load(KSERVE_SCHEMA.read_text(encoding="utf-8"))
    return {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{kind}"}


def check_kserve(doc: dict[str, Any]) -> None:
    """The CRD fields, then the core/v1 parts KServe inlines, against the Kubernetes schema."""
    jsonschema.validate(doc, kserve_schema(doc["kind"]), cls=jsonschema.Draft202012Validator)
    if doc["kind"] == "ServingRuntime":
        pod_spec = {"containers": doc["spec"]["containers"]}
    else:
        predictor = doc["spec"]["predictor"]
        model = {k: v for k, v in predictor["model"].items()
                 if k not in ("modelFormat", "runtime", "protocolVersion", "storageUri")}
        pod_spec = {"containers": [{"name": "kserve-container", **model}],
                    **{k: v for k, v in predictor.items() if k not in ("model", "minReplicas", "maxReplicas")}}
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": doc["metadata"]["name"]}, "spec": pod_spec},
             K8S_VERSIONS[-1])


def test_kserve_resources_match_the_crd_fields() -> None:
    manifests = kserve_manifests()
    assert set(manifests) == {"ServingRuntime", "InferenceService"}
    for doc in manifests.values():
        check_kserve(doc)
    runtime, service = manifests["ServingRuntime"], manifests["InferenceService"]
    # the InferenceService selects this runtime, by name, format and protocol
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] in [{k: f[k] for k in ("name", "version")} for f in runtime["spec"]["supportedModelFormats"]]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]


@pytest.mark.parametrize("kind, break_it", [
    ("InferenceService", lambda d: d["spec"]["predictor"]["model"].update(protocolVersion="grpc-v3")),
    ("InferenceService", lambda d: d["spec"]["predictor"]["model"].update(storageURI="pvc://x/")),
    ("InferenceService", lambda d: d["spec"]["predictor"]["model"]["ports"][0].update(containerPort="h2c")),
    ("ServingRuntime", lambda d: d["spec"]["supportedModelFormats"][0].update(autoselect=True)),
    ("ServingRuntime", lambda d: d["spec"]["containers"][0].update(readinesProbe={})),
], ids=["bad-protocol", "field-typo", "container-port-type", "format-typo", "container-field-typo"])
def test_a_broken_kserve_resource_fails(kind: str, break_it: Any) -> None:
    broken = copy.deepcopy(kserve_manifests()[kind])
    break_it(broken)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        check_kserve(broken)
