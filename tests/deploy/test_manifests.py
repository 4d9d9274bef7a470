"""The Kubernetes manifests and compose file: valid offline, and the invariants we rely on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
BIN = Path(sys.executable).parent


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / "k8s" / name).read_text())


def test_yamllint_clean() -> None:
    result = subprocess.run(
        [BIN / "yamllint", "--strict", "-c", DEPLOY / ".yamllint", DEPLOY],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_manifests_validate_against_kubernetes_schemas(version: str) -> None:
    result = subprocess.run(
        [BIN / "kubernetes-validate", "--strict", "-k", version, *MANIFESTS],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _kqd_security(container: dict) -> None:
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 65532
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"], "no capability beyond what a feature needs"


def _probes_use_kqctl_health(container: dict, names: list[str]) -> None:
    for probe in names:
        assert container[probe]["exec"]["command"] == ["kqctl", "health"], probe


def test_sidecar_invariants() -> None:
    pod = load("sidecar.yaml")["spec"]
    assert pod["shareProcessNamespace"] is True, "kqd must see the app's processes"
    (kqd,) = [c for c in pod["initContainers"] if c["name"] == "kqd"]
    assert kqd["restartPolicy"] == "Always", "a native sidecar: an init container that stays"
    _kqd_security(kqd)
    _probes_use_kqctl_health(kqd, ["startupProbe", "readinessProbe", "livenessProbe"])
    assert kqd["resources"]["requests"] and kqd["resources"]["limits"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["kqd-run"]
    for container in [kqd, *pod["containers"]]:
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["kqd-run"] == "/run/kqd", f"{container['name']} shares the socket dir"
        assert container["resources"]["limits"], container["name"]
    assert pod["securityContext"]["fsGroup"] == 65532, "the app may connect to the 0660 socket"


def test_daemonset_invariants() -> None:
    ds = load("daemonset.yaml")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True, "node-wide: the host's processes"
    (kqd,) = spec["containers"]
    _kqd_security(kqd)
    _probes_use_kqctl_health(kqd, ["readinessProbe", "livenessProbe"])
    host_path = {v["name"]: v for v in spec["volumes"]}["kqd-run"]["hostPath"]
    assert host_path["path"] == "/run/kqd"
    assert "RISKS" in (DEPLOY / "k8s" / "daemonset.yaml").read_text()


def test_compose_shares_the_pid_namespace() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert compose["services"]["kqd"]["pid"] == "service:app"
    assert compose["services"]["kqd"]["healthcheck"]["test"] == ["CMD", "kqctl", "health"]


def test_containerfile_contract() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    assert text.count("FROM ") == 2, "multi-stage"
    assert "--no-index" in text, "installed from wheels, no network during the build"
    assert "USER 65532" in text and 'VOLUME ["/run/kqd"]' in text
    assert 'CMD ["kqctl", "health"]' in text
    assert 'ENTRYPOINT ["kqd", "serve"' in text
