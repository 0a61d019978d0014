"""Rendering and validating the Kubernetes manifests under deploy/k8s.

Built-in kinds are checked by kubernetes-validate --strict (the Kubernetes OpenAPI schemas it
ships: unknown fields, wrong types and missing required fields fail). It has no schema for
custom resources, so those are checked here against the openAPIV3Schema of their CRDs, kept
in tests/deploy/crds/ (see the README there for their sources and versions). The CRD schemas
are made strict the way the API server prunes: an object that lists its properties and
neither allows more nor preserves unknown fields gets additionalProperties false. What the
CRDs' CEL rules (x-kubernetes-validations) say is not checked.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "k8s"
CRDS = Path(__file__).resolve().parent / "crds"
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# Components (kind: Component) need kustomize 3.7; kubectl bundles 4.0 from 1.21 on.
KUSTOMIZE_MIN = (4, 0)
# The venv's script, whether or not the venv is on PATH.
KUBERNETES_VALIDATE = str(Path(sys.executable).parent / "kubernetes-validate")

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Kustomization:
    """A kustomization under deploy/k8s: a Kustomization, or a Component used on a base."""

    path: Path
    kind: str
    base: Path | None  # for a Component: the nearest Kustomization above it

    @property
    def name(self) -> str:
        return str(self.path.relative_to(DEPLOY)) or "."


def find_kustomizations() -> list[Kustomization]:
    """Every kustomization under deploy/k8s, the base first."""
    dirs = sorted(
        {p.parent for name in KUSTOMIZATION_NAMES for p in DEPLOY.rglob(name)},
        key=lambda d: (len(d.parts), str(d)),
    )
    kinds = {d: _read_kustomization(d).get("kind", "Kustomization") for d in dirs}
    found: list[Kustomization] = []
    for d in dirs:
        base = None
        if kinds[d] == "Component":
            base = next(
                (a for a in d.parents if kinds.get(a) == "Kustomization"),
                None,
            )
        found.append(Kustomization(d, kinds[d], base))
    return found


def _read_kustomization(directory: Path) -> dict[str, Any]:
    for name in KUSTOMIZATION_NAMES:
        if (directory / name).exists():
            loaded: dict[str, Any] = yaml.safe_load((directory / name).read_text())
            return loaded
    raise FileNotFoundError(directory)


def resource_files(kustomization: Kustomization) -> list[Path]:
    """The files (not directories) a kustomization lists as resources."""
    listed = _read_kustomization(kustomization.path).get("resources", [])
    paths = [kustomization.path / entry for entry in listed]
    return [p for p in paths if p.is_file()]


def kubectl_problem() -> str | None:
    """Why `kubectl kustomize` cannot render the manifests here, or None if it can."""
    if shutil.which("kubectl") is None:
        return (
            "kubectl is not installed. No Debian package provides one recent enough: "
            "kubernetes-client is 1.20, whose kustomize 2.0.3 cannot render components"
        )
    out = subprocess.run(
        ["kubectl", "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    version = json.loads(out).get("kustomizeVersion", "v0")
    numbers = tuple(int(part) for part in version.lstrip("v").split(".")[:2])
    if numbers < KUSTOMIZE_MIN:
        return f"kubectl bundles kustomize {version}, which cannot render components"
    return None


def render(kustomization: Kustomization) -> list[Manifest]:
    """`kubectl kustomize` of a Kustomization, or of its base with a Component added."""
    if kustomization.kind == "Kustomization":
        return _kustomize(kustomization.path)
    assert kustomization.base is not None, f"{kustomization.name}: a component with no base"
    with tempfile.TemporaryDirectory() as tmp:
        # kustomize takes only relative paths to other kustomizations.
        overlay = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(kustomization.base, tmp)],
            "components": [os.path.relpath(kustomization.path, tmp)],
        }
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
        return _kustomize(Path(tmp))


def _kustomize(directory: Path) -> list[Manifest]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def load_manifests(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def problems(manifests: list[Manifest]) -> list[str]:
    """What is wrong with the manifests: built-in kinds by kubernetes-validate --strict, custom
    resources against their CRDs' schemas; an empty list when all are valid."""
    found: list[str] = []
    builtin: list[Manifest] = []
    for manifest in manifests:
        schema = crd_schemas().get(_group_version_kind(manifest))
        if schema is None:
            builtin.append(manifest)
            continue
        validator = jsonschema.Draft7Validator(schema)
        found.extend(
            f"{_name(manifest)}: {'.'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(manifest)
        )
    if builtin:
        found.extend(_kubernetes_validate(builtin))
    return found


def _kubernetes_validate(manifests: list[Manifest]) -> list[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump_all(manifests, file)
        file.flush()
        done = subprocess.run(
            [KUBERNETES_VALIDATE, "--strict", "--quiet", file.name],
            capture_output=True,
            text=True,
            check=False,
        )
    output = (done.stdout + done.stderr).strip()
    # A kind it has no schema for is only a warning to kubernetes-validate (exit 0): here it
    # is a failure, since nothing would have checked that resource.
    if done.returncode != 0 or output:
        return [output or f"kubernetes-validate exited {done.returncode}"]
    return []


@cache
def crd_schemas() -> dict[tuple[str, str, str], dict[str, Any]]:
    """(group, version, kind) -> the strict JSON schema of each vendored CRD version."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in load_manifests(path):
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                schemas[(spec["group"], version["name"], spec["names"]["kind"])] = schema
    return schemas


def _strict(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in strict
        and "additionalProperties" not in strict
        and not strict.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


def _group_version_kind(manifest: Manifest) -> tuple[str, str, str]:
    group, _, version = str(manifest.get("apiVersion", "")).rpartition("/")
    return group, version, str(manifest.get("kind", ""))


def _name(manifest: Manifest) -> str:
    return f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"


def of_kind(manifests: list[Manifest], kind: str) -> Iterator[Manifest]:
    return (m for m in manifests if m.get("kind") == kind)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects these labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True
