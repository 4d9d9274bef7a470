"""The Kubernetes manifests, compose file and shipped policies: valid offline, and the
invariants we rely on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kqd.core.constants import KQ_FILTER_SIGNAL
from kqd.daemon.credentials import Credentials
from kqd.daemon.identity import Principal
from kqd.daemon.policy import Policy

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
POLICIES = sorted((DEPLOY / "policy").glob("*.toml"))
BIN = Path(sys.executable).parent
POLICY_PATH = "/etc/kqd/policy.toml"


def documents(name: str) -> dict[str, dict]:
    """The documents of a manifest file, by kind (one of each)."""
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()))
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), f"{name}: one document of each kind"
    return by_kind


def load(name: str) -> dict:
    """The workload of a manifest file (what is not its ConfigMap)."""
    return next(doc for kind, doc in documents(name).items() if kind != "ConfigMap")


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
    assert spec["automountServiceAccountToken"] is False, "no API token for callers to find"


def test_compose_shares_the_pid_namespace() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert compose["services"]["kqd"]["pid"] == "service:app"
    assert compose["services"]["kqd"]["healthcheck"]["test"] == ["CMD", "kqctl", "health"]


def test_containerfile_contract() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    assert text.count("FROM ") == 2, "multi-stage"
    assert "--no-index" in text, "installed from wheels, no network during the build"
    assert "USER 65532" in text and 'VOLUME ["/run/kqd", "/var/lib/kqd"]' in text
    assert '"--state-dir", "/var/lib/kqd"' in text, "the state survives the container"
    assert 'CMD ["kqctl", "health"]' in text
    assert 'ENTRYPOINT ["kqd", "serve"' in text


# --- The policy each deployment ships ---------------------------------------------------------


def test_shipped_policies_pass_kqd_policy_check() -> None:
    assert POLICIES, "deploy/policy/*.toml"
    result = subprocess.run(
        [sys.executable, "-m", "kqd", "policy", "check", *POLICIES],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok\n") == len(POLICIES)


def test_a_broken_policy_fails_the_check_with_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[defaults]\nfilters = ["READ", "SIGNAL"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "kqd", "policy", "check", broken],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"{broken}:2: defaults.filters: SIGNAL is never allowed" in result.stderr


@pytest.mark.parametrize(
    ("manifest", "policy"), [("sidecar.yaml", "default.toml"), ("daemonset.yaml", "daemonset.toml")]
)
def test_manifests_carry_their_policy(manifest: str, policy: str) -> None:
    by_kind = documents(manifest)
    config_map = by_kind["ConfigMap"]
    text = config_map["data"]["policy.toml"]
    assert text == (DEPLOY / "policy" / policy).read_text(), f"{manifest} copies {policy}"
    Policy.parse(text, f"{manifest} ConfigMap")
    spec = load(manifest)["spec"]
    if "template" in spec:
        assert config_map["metadata"]["namespace"] == load(manifest)["metadata"]["namespace"]
        spec = spec["template"]["spec"]
    (kqd,) = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "kqd"]
    args = kqd["args"]
    assert args[args.index("--policy") + 1] == POLICY_PATH
    (volume,) = [v for v in spec["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    (mount,) = [m for m in kqd["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == str(Path(POLICY_PATH).parent) and mount["readOnly"] is True
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"


def test_the_daemonset_policy_is_safe_for_every_caller() -> None:
    policy = Policy.load(DEPLOY / "policy" / "daemonset.toml")
    assert policy.principals == (), "no caller gets more than the defaults"
    callers = [
        Principal.local(Credentials(65532, 65532, (), 1)),  # kqd's own uid
        Principal.local(Credentials(1000, 1000, (0, 4), 1)),
        Principal("tcp:anonymous"),
        Principal("tls:anyone"),
    ]
    for caller in callers:
        rules = policy.for_principal(caller)
        assert not rules.privileged and not rules.open_peer_fd
        assert not rules.filter_allowed(KQ_FILTER_SIGNAL)
        assert not rules.paths_granted
        for path in ("/proc/1/environ", "/sys/kernel", "/run/secrets/x", "/var/run/secrets/x"):
            assert rules.path_decision(path) == "deny", path
        assert rules.connect_allowed("127.0.0.1", 80)
        assert not rules.connect_allowed("10.0.0.1", 80) and not rules.connect_allowed("::", 80)
        assert rules.quotas.knotes <= 20_000 and rules.quotas.descriptors <= 256


def test_the_image_and_compose_carry_the_default_policy() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    assert f"COPY deploy/policy/default.toml {POLICY_PATH}" in text
    assert f"KQD_POLICY={POLICY_PATH}" in text, "kqd serve's default, whatever the arguments"
    kqd = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["kqd"]
    assert kqd["command"] == ["--policy", POLICY_PATH]
    assert f"./policy/default.toml:{POLICY_PATH}:ro" in kqd["volumes"]


@pytest.mark.parametrize("manifest", ["sidecar.yaml", "daemonset.yaml"])
def test_manifests_keep_the_state_outside_the_container(manifest: str) -> None:
    """kqd's state directory is a volume that outlives the container (an emptyDir survives a
    container restart within its pod; the DaemonSet keeps it on the node)."""
    text = (DEPLOY / "k8s" / manifest).read_text()
    assert "name: kqd-state" in text and "mountPath: /var/lib/kqd" in text
