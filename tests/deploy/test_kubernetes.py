"""deploy/k8s, validated by `kubernetes-validate --strict` against the oldest and the newest Kubernetes we
claim, and KEDA's objects against the schemas of KEDA's own CRDs (vendored in keda_crds.yaml); then the
properties the deployment relies on: probes that mean what they say, resources, security contexts,
Recreate for one-GPU workers, and autoscaling on the right model's queue."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shared.contracts import generation_queue
from tests.deploy.conftest import DEPLOY, ROOT, tool

K8S = DEPLOY / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
KUBERNETES = ["1.29.0", "1.37.0"]  # the oldest we claim (README.md, "Deploying") and the newest known
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
WORKLOADS = {"Deployment", "StatefulSet", "Job"}


def documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in documents() if doc["kind"] == kind}


def containers(kind: str = "") -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, pod spec, container) of every workload (of `kind`)."""
    return [
        (doc["metadata"]["name"], doc["spec"]["template"]["spec"], container)
        for doc in documents()
        if doc["kind"] in WORKLOADS and kind in ("", doc["kind"])
        for container in doc["spec"]["template"]["spec"]["containers"]
    ]


def strict(schema: Any) -> Any:
    """The schema as the API server applies it with strict field validation: a field that an object's
    schema does not list is an error."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(item) for item in schema]
    return schema


@pytest.mark.parametrize("version", KUBERNETES)
def test_kubernetes_validate_strict_passes_every_manifest(version: str) -> None:
    result = subprocess.run(
        [str(tool("kubernetes-validate")), "--strict", "-k", version, *map(str, MANIFESTS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    unchecked = [line for line in result.stdout.splitlines() if not line.startswith("INFO")]
    # only KEDA's kinds are unknown to it: the next test checks them against KEDA's schemas
    assert all("keda.sh/v1alpha1" in line and "Couldn't find schema" in line for line in unchecked), unchecked
    assert result.stdout.count(" passed for resource ") == sum(d["kind"] not in KEDA_KINDS for d in documents())


def test_keda_objects_follow_kedas_crd_schemas() -> None:
    schemas = yaml.safe_load((Path(__file__).parent / "keda_crds.yaml").read_text())
    found = [doc for doc in documents() if doc["kind"] in KEDA_KINDS]
    assert {doc["kind"] for doc in found} == KEDA_KINDS
    for doc in found:
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        jsonschema.validate(doc, strict(copy.deepcopy(schemas[doc["kind"]])))
    with pytest.raises(jsonschema.ValidationError):  # the strictness is real: a misspelt field fails
        bad = copy.deepcopy(next(doc for doc in found if doc["kind"] == "ScaledObject"))
        bad["spec"]["minReplicas"] = 0
        jsonschema.validate(bad, strict(schemas["ScaledObject"]))


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)
    assert {image["name"] for image in kustomization["images"]} == {
        c["image"].split(":")[0] for _, _, c in containers() if c["image"].startswith("canvas-")
    }


def test_every_component_runs() -> None:
    commands = {name: " ".join(c.get("command", [])) for name, _, c in containers()}
    assert commands["canvas-migrate"] == "canvas db upgrade"
    assert by_kind("Job").keys() == {"canvas-migrate"}  # no init container migrates in every replica
    assert all(not pod.get("initContainers") for _, pod, _ in containers())
    assert commands["canvas-api"].startswith("gunicorn")
    assert commands["canvas-sweeper"] == "canvas sweeper"
    assert commands["canvas-train"].startswith("canvas worker train")
    assert commands["canvas-webhooks"].startswith("canvas worker webhooks")
    assert any(c.startswith("canvas worker serve") for c in commands.values())
    assert {"canvas-redis", "canvas-postgres"} <= by_kind("StatefulSet").keys()
    assert {"canvas-models", "canvas-var"} <= by_kind("PersistentVolumeClaim").keys()


def test_every_container_has_resources_and_a_locked_down_security_context() -> None:
    for name, pod, container in containers():
        assert container["resources"]["requests"] and container["resources"]["limits"], name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"] == {"drop": ["ALL"]}, name
        assert not container["image"].endswith(":latest") and ":" in container["image"], name


def test_the_api_probes_do_not_fail_on_a_redis_blip() -> None:
    """/healthz answers 503 while Redis is down (api/health.py): as a readiness probe it would take every API
    pod out of service during a blip, while the outbox keeps accepting jobs. Readiness is /readyz (the
    database only; tests/api/test_readiness.py), liveness /livez (no dependency: a restart would bring
    neither back)."""
    (container,) = [c for name, _, c in containers() if name == "canvas-api"]
    paths = {
        probe: container[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert paths == {"startupProbe": "/livez", "readinessProbe": "/readyz", "livenessProbe": "/livez"}


def test_workers_liveness_follows_their_heartbeat() -> None:
    for name, _, container in containers("Deployment"):
        command = " ".join(container.get("command", []))
        if not command.startswith("canvas worker"):
            continue
        kind = command.split()[2]
        for probe in ("startupProbe", "livenessProbe"):
            expected = ["python", "deploy/heartbeat_probe.py", "--kind", kind]
            assert container[probe]["exec"]["command"] == expected, (name, probe)


def test_one_gpu_workers_are_recreated_not_rolled() -> None:
    gpu = [doc for doc in by_kind("Deployment").values() if "nvidia.com/gpu" in str(doc)]
    assert len(gpu) >= 2  # generation and fine-tuning
    for doc in gpu:
        assert doc["spec"]["strategy"] == {"type": "Recreate"}, doc["metadata"]["name"]
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert (
            "--gpus" in container["command"] and container["command"][container["command"].index("--gpus") + 1] == "0"
        )


def test_each_generation_deployment_scales_on_its_models_queue() -> None:
    deployments, auths = by_kind("Deployment"), by_kind("TriggerAuthentication")
    scaled = by_kind("ScaledObject")
    serving = {
        n: d
        for n, d in deployments.items()
        if "worker serve" in " ".join(d["spec"]["template"]["spec"]["containers"][0]["command"])
    }
    assert serving and {so["spec"]["scaleTargetRef"]["name"] for so in scaled.values()} == set(serving)
    for so in scaled.values():
        deployment = serving[so["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in deployment["spec"]  # KEDA owns them; re-applying must not reset them
        command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
        models = command[command.index("--models") + 1].split(",")
        (trigger,) = so["spec"]["triggers"]
        # Jobs wait in SQL (fair release): the trigger counts the model's queued jobs there.
        query = trigger["metadata"]["query"]
        assert trigger["type"] == "postgresql" and f"queue = '{generation_queue(models[0])}'" in query
        assert len(models) == 1  # one model per Deployment: its queue alone measures its load
        assert trigger["authenticationRef"]["name"] in auths
        assert so["spec"]["minReplicaCount"] >= 1  # scale to zero is opt-in
