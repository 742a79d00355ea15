"""cluster/: Ray's own schema accepts the launcher YAMLs, KubeRay manifests carry the fields
KubeRay needs, nothing holds a credential / open ingress / floating image, and every install
and every documented command matches this checkout (pyproject version, jobs/train.py CLI).

Offline: no cloud, no credentials, no network (spec/ray.md section 7).
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml
from helpers import REPO_ROOT, load_job

CLUSTER = REPO_ROOT / "cluster"
LAUNCHER = ["aws.yaml", "gcp.yaml", "local.yaml"]
KUBERAY = ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml"]
# local.yaml's placeholders, replaced in memory; these addresses are never contacted.
TEST_IPS = {"head_ip": "127.0.0.1", "worker_ip": "127.0.0.1"}


def pyproject() -> dict:
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


VERSION = pyproject()["project"]["version"]
RAY_PIN = next(re.search(r"==([\w.]+)", d).group(1)
               for d in pyproject()["project"]["dependencies"] if d.startswith("ray["))


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def prepared(name: str) -> dict:
    """The config as `ray up` sees it: merged with the provider's defaults.yaml."""
    from ray.autoscaler._private.util import prepare_config

    raw = load(name)
    if raw["provider"]["type"] == "local":
        raw["provider"]["head_ip"] = TEST_IPS["head_ip"]
        raw["provider"]["worker_ips"] = [TEST_IPS["worker_ip"]] * len(raw["provider"]["worker_ips"])
    return prepare_config(copy.deepcopy(raw))


def cluster_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.is_file())


# --- (1) Ray's schema -------------------------------------------------------------------

def test_every_yaml_under_cluster_is_checked_here():
    found = {str(p.relative_to(CLUSTER)) for p in CLUSTER.rglob("*.yaml")}
    assert found == set(LAUNCHER) | set(KUBERAY), "add new cluster files to this test module"


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_passes_rays_schema(name):
    from ray.autoscaler._private.util import validate_config

    config = prepared(name)
    validate_config(config)  # jsonschema vs ray/autoscaler/ray-schema.json + Ray's own checks
    assert config["head_node_type"] in config["available_node_types"]


def test_schema_check_is_not_vacuous():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load("aws.yaml")
    raw["max_wrokers"] = 3
    with pytest.raises(Exception, match="max_wrokers"):
        validate_config(prepare_config(raw))


@pytest.mark.parametrize("name", LAUNCHER)
def test_no_ray_default_commands_leak_in(name):
    """Empty lists on purpose: defaults.yaml would add `pip install ray ... latest` wheels."""
    config = prepared(name)
    commands = [c for key in ("initialization_commands", "head_setup_commands",
                              "worker_setup_commands", "head_start_ray_commands",
                              "worker_start_ray_commands") for c in config[key]]
    assert not [c for c in commands if "latest" in c or "ray-wheels" in c]


@pytest.mark.parametrize("name", LAUNCHER)
def test_dashboard_on_loopback_and_auth_mode_explicit(name):
    config = prepared(name)
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
              if "ray start" in c]
    head = [c for c in config["head_start_ray_commands"] if "--head" in c]
    assert len(head) == 1 and "--dashboard-host=127.0.0.1" in head[0]
    assert "0.0.0.0" not in " ".join(starts)
    assert all("export RAY_AUTH_MODE=token;" in c for c in starts), starts
    # the token file travels with the cluster, never inside the repository
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_aws_never_lets_ray_create_an_open_security_group():
    """Without SecurityGroupIds Ray creates a group with SSH open to 0.0.0.0/0 (hard-coded in
    ray/autoscaler/_private/aws/config.py); with them on every node type it creates none."""
    config = load("aws.yaml")
    types = config["available_node_types"]
    assert "security_group" not in config["provider"]
    for name, node in types.items():
        assert node["node_config"]["SecurityGroupIds"], name
        assert node["node_config"]["IamInstanceProfile"]["Name"], name  # S3 via the profile
    head = types[config["head_node_type"]]["node_config"]
    assert "InstanceMarketOptions" not in head  # the head is never spot
    spot = [n for n, t in types.items()
            if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    gpu_types = {t["node_config"]["InstanceType"] for t in types.values()} - {head["InstanceType"]}
    assert spot and len(gpu_types) >= 2


def test_gcp_brings_its_own_network_and_worker_account():
    config = load("gcp.yaml")
    types = config["available_node_types"]
    assert "gcp_credentials" not in config["provider"]
    for name, node in types.items():
        assert node["node_config"]["networkInterfaces"][0]["subnetwork"], name
        if name != config["head_node_type"]:
            assert node["node_config"]["serviceAccounts"][0]["email"], name
            assert node["resources"]["GPU"] == 1, name
    assert any(t["node_config"].get("scheduling", {}).get("provisioningModel") == "SPOT"
               for t in types.values())


# --- (2) credentials, open ingress, floating images ---------------------------------------

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key setting": re.compile(r"aws_secret_access_key|aws_session_token", re.I),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GCP key file": re.compile(r'"private_key(_id)?"\s*:|"type"\s*:\s*"service_account"'),
    "password": re.compile(r"pass(word|wd)\s*[:=]", re.I),
    "literal Ray token": re.compile(r"RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{16,}"),
    "open ingress": re.compile(r"0\.0\.0\.0/0|::/0"),
    "floating image tag": re.compile(r":latest\b|\bimage:\s*[\w./-]+\s*$", re.M),
}


def scan(text: str) -> list[str]:
    return [name for name, pattern in SECRET_PATTERNS.items() if pattern.search(text)]


def test_scanner_catches_what_it_should():
    bad = {
        "AWS access key id": "key: AKIA" + "ABCDEFGHIJKLMNOP",
        "AWS secret key setting": "AWS_SECRET_ACCESS_KEY=abc",
        "private key": "-----BEGIN OPENSSH " + "PRIVATE KEY-----",
        "GCP key file": '{"type": "service_account", "private_key": "x"}',
        "password": "password: hunter2",
        "literal Ray token": "RAY_AUTH_TOKEN=" + "a1" * 16,
        "open ingress": "CidrIp: 0.0.0.0" + "/0",
        "floating image tag": "image: rayproject/ray" + ":latest",
    }
    for name, line in bad.items():
        assert name in scan(line), name
    assert "floating image tag" in scan("    image: rayproject/ray\n")  # no tag at all


@pytest.mark.parametrize("path", cluster_files(), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_no_credentials_open_ingress_or_floating_images(path):
    assert scan(path.read_text()) == []


def image_references() -> list[tuple[str, str]]:
    refs = []
    for name in LAUNCHER:
        docker = load(name).get("docker", {})
        refs += [(name, docker[k]) for k in ("image", "head_image", "worker_image") if k in docker]
    for name in KUBERAY:
        text = (CLUSTER / name).read_text()
        refs += [(name, m) for m in re.findall(r"^\s*image:\s*(\S+)", text, re.M)]
    dockerfile = (CLUSTER / "kuberay" / "Dockerfile").read_text()
    refs += [("Dockerfile", m) for m in re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)]
    return refs


def test_every_image_is_pinned_to_an_exact_version():
    refs = image_references()
    assert len(refs) >= 5
    for where, image in refs:
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{where}: {image} has no exact version tag"
        if image.startswith("rayproject/"):
            assert tag.startswith(RAY_PIN + "-"), f"{where}: {image} is not Ray {RAY_PIN}"


# --- (3) installs match pyproject ---------------------------------------------------------

@pytest.mark.parametrize("name", LAUNCHER)
def test_setup_installs_the_pyproject_version_after_an_explicit_torch(name):
    config = prepared(name)
    assert config["file_mounts"]["~/simvp_ray_dist"] == "./dist"  # the checkout's wheel
    for key in ("head_setup_commands", "worker_setup_commands"):
        commands = config[key]
        versions = [v for c in commands for v in re.findall(r"simvp_ray==([\w.+-]+)", c)]
        assert versions and set(versions) == {VERSION}, (key, versions, VERSION)
        torch_at = [i for i, c in enumerate(commands) if re.search(r'"torch==[\d.]+"', c)]
        project_at = [i for i, c in enumerate(commands) if "simvp_ray==" in c]
        assert torch_at and torch_at[0] < project_at[0], f"{key}: torch must come first"
        assert all("--index-url https://download.pytorch.org/whl/" in commands[i]
                   for i in torch_at)
    workers = " ".join(config["worker_setup_commands"])
    assert "/whl/cu" in workers  # a CUDA build, named, on the GPU workers


def test_kuberay_image_is_the_pyproject_version():
    dockerfile = (CLUSTER / "kuberay" / "Dockerfile").read_text()
    assert f"ARG SIMVP_RAY_VERSION={VERSION}\n" in dockerfile
    assert '"simvp_ray==${SIMVP_RAY_VERSION}"' in dockerfile
    assert "torch==" in dockerfile.split("simvp_ray==")[0]  # explicit torch first
    for name in KUBERAY:
        images = re.findall(r"^\s*image:\s*(\S+)", (CLUSTER / name).read_text(), re.M)
        assert images and {i.rsplit(":", 1)[1] for i in images} == {VERSION}, (name, images)


# --- (4) KubeRay manifests ---------------------------------------------------------------

def check_ray_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == RAY_PIN
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # no LoadBalancer / NodePort
    groups = [head] + spec["workerGroupSpecs"]
    for group in groups:
        # rayStartParams is map[string]string in the CRD: numbers must be quoted
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values())
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c["name"] and c["image"] for c in containers)
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 1


def test_raycluster_manifest():
    manifest = load("kuberay/raycluster.yaml")
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    assert manifest["metadata"]["name"]
    check_ray_cluster_spec(manifest["spec"])


def test_rayjob_manifest():
    manifest = load("kuberay/rayjob.yaml")
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    assert "jobs/train.py" in spec["entrypoint"] and "--storage s3://" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    check_ray_cluster_spec(spec["rayClusterSpec"])


# --- documented commands match jobs/train.py's CLI ---------------------------------------

def documented_train_commands() -> list[tuple[str, list[str]]]:
    """(file, argv after jobs/train.py) of every `python .../jobs/train.py ...` in cluster/."""
    found = []
    for path in cluster_files():
        text = path.read_text()
        if path.suffix == ".yaml":  # commands in the comments, continued with '\'
            text = "\n".join(line.strip().lstrip("#").strip() for line in text.splitlines()
                             if line.strip().startswith("#"))
        if path.name == "rayjob.yaml":
            text += "\n" + load("kuberay/rayjob.yaml")["spec"]["entrypoint"]
        text = text.replace("\\\n", " ")
        for line in text.splitlines():
            if re.search(r"python \S*jobs/train\.py", line):
                argv = shlex.split(line.split("jobs/train.py", 1)[1].split("`")[0])
                found.append((str(path.relative_to(CLUSTER)), argv))
    return found


def test_documented_train_commands_parse_with_the_real_cli(monkeypatch):
    if not (REPO_ROOT / "jobs" / "train.py").exists():
        pytest.skip("jobs/train.py not written yet")
    commands = documented_train_commands()
    assert {f for f, _ in commands} >= set(LAUNCHER) | set(KUBERAY) | {"README.md"}
    job = load_job("train")
    seen = []
    monkeypatch.setattr(job, "launch_run", lambda config, **kw: seen.append((config, kw)))
    monkeypatch.setattr(job, "format_summary", lambda summary: "")
    for where, argv in commands:
        assert job.main(argv) == 0, (where, argv)  # unknown flags / keys / presets fail here
        config, kw = seen[-1]
        if "--storage" in argv:
            assert kw["storage"].split("://")[0] in ("s3", "gs") or kw["storage"].startswith("/")
        if "--gpu" in argv:
            assert config.scaling.use_gpu
