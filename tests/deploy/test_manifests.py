"""Every kustomization under deploy/k8s renders with `kubectl kustomize` and validates strictly.

How each kind is validated is told in tests/deploy/manifests.py: built-in kinds by
kubernetes-validate --strict, custom resources (KEDA, prometheus-operator) against the
openAPIV3Schema of their vendored CRDs. Rendering needs kubectl (its kustomize); the files
each kustomization lists are also validated one by one, which needs no kubectl.
"""

import copy
from typing import Any

import pytest

from tests.deploy.manifests import (
    DEPLOY,
    Kustomization,
    Manifest,
    find_kustomizations,
    kubectl_problem,
    load_manifests,
    of_kind,
    problems,
    render,
    resource_files,
    selects,
)

KUSTOMIZATIONS = find_kustomizations()
BY_NAME = {k.name: k for k in KUSTOMIZATIONS}
SERVICES = ("api", "dispatcher", "sender", "tracker", "bouncer", "webhooks")


@pytest.fixture(scope="module")
def kubectl() -> None:
    problem = kubectl_problem()
    if problem is not None:
        pytest.skip(f"cannot render with kubectl kustomize: {problem}")


def base_manifests() -> list[Manifest]:
    return [m for f in resource_files(BY_NAME["."]) for m in load_manifests(f)]


def test_the_autoscaling_and_ingress_components_are_found() -> None:
    assert {".", "autoscaling/keda", "autoscaling/hpa", "ingress"} <= set(BY_NAME)
    assert BY_NAME["autoscaling/keda"].base == DEPLOY


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda k: k.name)
@pytest.mark.usefixtures("kubectl")
def test_kustomization_renders_valid_manifests(kustomization: Kustomization) -> None:
    manifests = render(kustomization)
    assert manifests
    assert problems(manifests) == []


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda k: k.name)
def test_each_listed_file_is_valid_on_its_own(kustomization: Kustomization) -> None:
    files = resource_files(kustomization)
    if kustomization.name == ".":
        # Not listed (applying it would overwrite the real Secret), but copied by operators.
        files.append(DEPLOY / "secret.example.yaml")
    manifests = [m for f in files for m in load_manifests(f)]
    assert manifests
    assert problems(manifests) == []


def test_validation_rejects_what_the_api_server_would() -> None:
    scaled_object = next(
        of_kind(load_manifests(DEPLOY / "autoscaling/keda/scaledobject.yaml"), "ScaledObject")
    )
    misspelled = copy.deepcopy(scaled_object)
    misspelled["spec"]["minReplicas"] = misspelled["spec"].pop("minReplicaCount")
    wrong_type = copy.deepcopy(scaled_object)
    wrong_type["spec"]["pollingInterval"] = "30s"
    deployment = next(of_kind(load_manifests(DEPLOY / "sender.yaml"), "Deployment"))
    unknown_field = copy.deepcopy(deployment)
    unknown_field["spec"]["template"]["spec"]["gracePeriod"] = 150
    unknown_kind = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
    }

    assert problems([scaled_object]) == []
    assert "minReplicas" in "".join(problems([misspelled]))
    assert "pollingInterval" in "".join(problems([wrong_type]))
    assert "gracePeriod" in "".join(problems([unknown_field]))
    assert "Widget" in "".join(problems([unknown_kind]))


def test_every_deployment_has_a_disruption_budget() -> None:
    manifests = base_manifests()
    budgets = list(of_kind(manifests, "PodDisruptionBudget"))
    for deployment in of_kind(manifests, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        assert len(matching) == 1, deployment["metadata"]["name"]
        # At most one pod evicted at a time, whatever the replica count.
        assert matching[0]["spec"]["maxUnavailable"] == 1


def test_replicated_deployments_spread_over_zones_and_nodes() -> None:
    for deployment in of_kind(base_manifests(), "Deployment"):
        if deployment["spec"]["replicas"] < 2:
            continue
        pod = deployment["spec"]["template"]
        constraints = pod["spec"]["topologySpreadConstraints"]
        keys = {c["topologyKey"] for c in constraints}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        for constraint in constraints:
            assert selects(constraint["labelSelector"], pod["metadata"]["labels"])


def test_sender_grace_period_covers_a_slow_message_in_hand() -> None:
    deployment = next(of_kind(load_manifests(DEPLOY / "sender.yaml"), "Deployment"))
    # Four SMTP commands of a message on an open session, at the default 30 s timeout each.
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 4 * 30


@pytest.mark.parametrize(
    ("component", "kind"),
    [("autoscaling/keda", "ScaledObject"), ("autoscaling/hpa", "HorizontalPodAutoscaler")],
)
@pytest.mark.usefixtures("kubectl")
def test_the_autoscaler_owns_the_sender_replicas(component: str, kind: str) -> None:
    manifests = render(BY_NAME[component])
    autoscaler = next(of_kind(manifests, kind))
    target = autoscaler["spec"]["scaleTargetRef"]
    deployments = {d["metadata"]["name"]: d for d in of_kind(manifests, "Deployment")}
    assert target["name"] == "mailfleet-sender"
    assert "replicas" not in deployments[target["name"]]["spec"]
    # The other Deployments keep theirs.
    assert deployments["mailfleet-api"]["spec"]["replicas"] == 2


def test_keda_and_hpa_scale_alike() -> None:
    scaled = next(
        of_kind(load_manifests(DEPLOY / "autoscaling/keda/scaledobject.yaml"), "ScaledObject")
    )
    hpa = next(
        of_kind(load_manifests(DEPLOY / "autoscaling/hpa/hpa.yaml"), "HorizontalPodAutoscaler")
    )
    spec = scaled["spec"]
    trigger = spec["triggers"][0]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
        hpa["spec"]["minReplicas"],
        hpa["spec"]["maxReplicas"],
    )
    assert trigger["metricType"] == hpa["spec"]["metrics"][0]["external"]["target"]["type"]
    assert (
        trigger["metadata"]["threshold"]
        == hpa["spec"]["metrics"][0]["external"]["target"]["averageValue"]
    )
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["spec"]["behavior"]


# NetworkPolicy, as the API server reads it: a pod selected by no policy of a direction is
# open in that direction; once selected, only what some selecting policy allows passes.
Pod = dict[str, str]


def _pods(manifests: list[Manifest]) -> dict[str, tuple[Pod, dict[str, int]]]:
    """Workload name -> (pod labels, named container ports)."""
    pods = {}
    templates = [
        (w["metadata"]["name"], w["spec"]["template"]) for w in of_kind(manifests, "Deployment")
    ]
    templates += [(w["metadata"]["name"], w["spec"]["template"]) for w in of_kind(manifests, "Job")]
    templates += [
        (w["metadata"]["name"], w["spec"]["jobTemplate"]["spec"]["template"])
        for w in of_kind(manifests, "CronJob")
    ]
    for workload_name, template in templates:
        ports = {
            p["name"]: p["containerPort"]
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
            if "name" in p
        }
        pods[workload_name] = (template["metadata"]["labels"], ports)
    return pods


def _port_matches(
    rule_ports: list[dict[str, Any]] | None, port: int, named: dict[str, int]
) -> bool:
    if not rule_ports:
        return True
    for rule in rule_ports:
        number = named.get(rule["port"]) if isinstance(rule["port"], str) else rule["port"]
        if number is not None and number <= port <= rule.get("endPort", number):
            return True
    return False


def _peer_matches(peers: list[dict[str, Any]] | None, namespace: str, labels: Pod) -> bool:
    if not peers:
        return True
    for peer in peers:
        if "ipBlock" in peer:
            continue
        ns_selector = peer.get("namespaceSelector")
        ns_ok = (
            namespace == "mailfleet"
            if ns_selector is None
            else selects(ns_selector, {"kubernetes.io/metadata.name": namespace})
        )
        pod_ok = selects(peer.get("podSelector", {}), labels)
        if ns_ok and pod_ok:
            return True
    return False


def egress_allowed(policies: list[Manifest], pod: tuple[Pod, dict[str, int]], port: int) -> bool:
    """Whether the pod may open a connection to this port outside the namespace."""
    labels, _ = pod
    selecting = [
        p
        for p in policies
        if "Egress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], labels)
    ]
    return not selecting or any(
        rule.get("to") is None and _port_matches(rule.get("ports"), port, {})
        for p in selecting
        for rule in p["spec"].get("egress", [])
    )


def ingress_allowed(
    policies: list[Manifest],
    pod: tuple[Pod, dict[str, int]],
    port: int,
    namespace: str,
    labels: Pod,
) -> bool:
    """Whether a pod of that namespace with those labels may connect to this pod's port."""
    target_labels, named = pod
    selecting = [
        p
        for p in policies
        if "Ingress" in p["spec"]["policyTypes"]
        and selects(p["spec"]["podSelector"], target_labels)
    ]
    return not selecting or any(
        _peer_matches(rule.get("from"), namespace, labels)
        and _port_matches(rule.get("ports"), port, named)
        for p in selecting
        for rule in p["spec"].get("ingress", [])
    )


def test_network_policies_allow_only_the_expected_paths() -> None:
    manifests = base_manifests()
    policies = list(of_kind(manifests, "NetworkPolicy"))
    pods = _pods(manifests)
    jobs = ("migrate", "backup", "retention")
    name = {f"mailfleet-{s}": s for s in (*SERVICES, "redis", *jobs)}
    http_port = {
        "api": 8000, "dispatcher": 8001, "sender": 8002, "tracker": 8003, "bouncer": 8004,
        "webhooks": 8005,
    }  # fmt: skip
    outsider = ("default", {"app": "something"})
    ingress_controller = ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
    prometheus = ("monitoring", {"app.kubernetes.io/name": "prometheus"})

    def reaches_postgres(workload: str) -> bool:
        return egress_allowed(policies, pods[workload], 5432)

    assert {name[w] for w in pods if reaches_postgres(w)} == {*SERVICES, *jobs}
    on_the_bus = set(SERVICES) - {"webhooks"}  # reads the outbox from PostgreSQL only
    assert {name[w] for w in pods if egress_allowed(policies, pods[w], 5672)} == on_the_bus
    assert {name[w] for w in pods if egress_allowed(policies, pods[w], 25)} == {"sender"}
    assert {name[w] for w in pods if egress_allowed(policies, pods[w], 993)} == {"bouncer"}
    # Webhook endpoints; OAuth token endpoints and the Gmail API.
    https = {"webhooks", "api", "sender", "bouncer"}
    assert {name[w] for w in pods if egress_allowed(policies, pods[w], 443)} == https
    assert all(egress_allowed(policies, pods[w], 53) for w in pods)
    # Nothing else leaves: an arbitrary port is closed to every pod.
    assert not any(egress_allowed(policies, pods[w], 8080) for w in pods)

    redis = pods["mailfleet-redis"]
    api_labels = pods["mailfleet-api"][0]
    assert ingress_allowed(policies, redis, 6379, "mailfleet", api_labels)
    for other in ("mailfleet-sender", "mailfleet-tracker"):
        assert not ingress_allowed(policies, redis, 6379, "mailfleet", pods[other][0])
    assert not ingress_allowed(policies, redis, 6379, *prometheus)

    for service, port in http_port.items():
        pod = pods[f"mailfleet-{service}"]
        assert ingress_allowed(policies, pod, port, *prometheus), service
        assert not ingress_allowed(policies, pod, port, *outsider), service
        public = service in ("api", "tracker")
        assert ingress_allowed(policies, pod, port, *ingress_controller) == public, service
        # Pods of the namespace do not call each other over HTTP.
        assert not ingress_allowed(policies, pod, port, "mailfleet", api_labels), service
