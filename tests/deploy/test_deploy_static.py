"""Static checks of the deployment (issue 4), no Docker engine needed.

* docker-compose.yml is valid for docker-compose (``config -q``) and a broken copy is refused;
* it agrees with the code: env names are real settings (service/settings.py) with valid values,
  ports are the settings' ports, the health command is the real probe module, volumes land
  where the settings look, stop_grace_period covers the drain time, and every file it
  references exists;
* the Dockerfile: torch-free non-root serving image with the probe as HEALTHCHECK, exact torch
  pin from the CPU index for the train target, GPU variant by build argument;
* nginx accepts the repo's template rendered with compose's values (``nginx -t``);
* Prometheus: ``promtool check config``, ``promtool check rules``, ``promtool test rules`` and
  every metric name in the rules exists in service/metrics.py;
* deploy/k8s/: parses, required fields present, image / ports / probes / env / grace period
  agree with docker-compose.yml, the HPA metric is a real metric, KServe objects reference
  each other.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.metrics import ServiceMetrics
from service.settings import Settings, SettingsError, env_name, load_settings
from tests.support.deploy_env import (
    COMPOSE_FILE,
    REPO,
    compose_service,
    duration_seconds,
    env_of,
    require_tools,
    run_compose,
)

DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
NGINX_TEMPLATE = DEPLOY / "nginx" / "nginx.conf"
PROMETHEUS_DIR = DEPLOY / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
K8S = DEPLOY / "k8s"
SERVER_SERVICES = ("textclf", "textclf-gpu")
SETTINGS_ENV = {env_name(f) for f in Settings.model_fields}
PROBE = ["python", "-m", "service.healthcheck", "--address"]
DRAIN_MARGIN_S = 3.0


# ----------------------------------------------------------------------------- helpers
def dockerfile_stages() -> dict[str, str]:
    """Stage name -> its instructions (text between its FROM and the next)."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.MULTILINE | re.IGNORECASE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def dockerfile_args() -> dict[str, str]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", text, flags=re.MULTILINE))


def pyproject_pin(package: str, extra: str | None = None) -> str:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = project["optional-dependencies"][extra] if extra else project["dependencies"]
    for requirement in requirements:
        match = re.fullmatch(rf"{re.escape(package)}==([\w.]+)", requirement.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"pyproject.toml pins no {package}== in {extra or 'dependencies'}")


def metric_sample_names() -> set[str]:
    """Every sample name service/metrics.py can export (families plus their suffixes)."""
    names: set[str] = set()
    for family in ServiceMetrics().registry.collect():
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "gauge": ("",), "summary": ("_sum", "_count", "_created")}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
        names.add(family.name)
    return names


def k8s_docs() -> dict[str, dict[str, Any]]:
    """kind/name -> object, for every YAML document under deploy/k8s/."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is None:
                continue
            key = f"{doc['kind']}/{doc.get('metadata', {}).get('name', path.stem)}"
            assert key not in objects, f"{key} defined twice"
            objects[key] = doc
    return objects


def k8s_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def healthcheck_port(test: list[str]) -> int:
    assert test[0] == "CMD" and test[1:5] == PROBE, f"health check is not the probe module: {test}"
    host, port = test[5].rsplit(":", 1)
    assert host in {"127.0.0.1", "localhost"}
    return int(port)


# ------------------------------------------------------------------------- compose: valid
def test_compose_config_is_valid() -> None:
    for profile_args in ((), ("--profile", "gpu")):
        done = run_compose(*profile_args, "config", "-q")
        assert done.returncode == 0, f"docker-compose {' '.join(profile_args)} config -q: {done.stderr}"


@pytest.mark.parametrize(("original", "broken"), [
    ("condition: service_healthy", "condition: service_helthy"),
    ("replicas: ${TEXTCLF_REPLICAS:-2}", "replicas: two"),
    ("stop_grace_period: 15s", "stop_grace_period: [15]"),
    ("    healthcheck: *textclf-healthcheck\n    depends_on:\n      model-init:",
     "    healthcheck: *textclf-healthcheck\n    depends_onn:\n      model-init:"),
])
def test_compose_config_rejects_a_broken_copy(tmp_path: Path, original: str, broken: str) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert original in text, f"the mutation anchor {original!r} is gone from docker-compose.yml"
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(text.replace(original, broken, 1), encoding="utf-8")
    done = run_compose("config", "-q", compose_file=copy, cwd=tmp_path)
    assert done.returncode != 0, f"docker-compose accepted {broken!r}"


# ------------------------------------------------------------------ compose vs. the code
@pytest.mark.parametrize("name", SERVER_SERVICES)
def test_server_environment_is_real_valid_settings(name: str) -> None:
    env = env_of(compose_service(name))
    textclf_env = {k: v for k, v in env.items() if k.startswith("TEXTCLF_")}
    unknown = sorted(set(textclf_env) - SETTINGS_ENV)
    assert not unknown, f"{name}: not settings in service/settings.py: {unknown}"
    try:
        settings = load_settings([], environ=textclf_env)  # the service's own parsing and validation
    except SettingsError as exc:
        pytest.fail(f"{name}: the service would refuse this environment: {exc}")
    assert settings.model_repository == env["TEXTCLF_MODEL_REPOSITORY"]


@pytest.mark.parametrize("name", SERVER_SERVICES)
def test_server_ports_health_and_volume_agree_with_settings(name: str) -> None:
    service = compose_service(name)
    env = env_of(service)
    defaults = Settings()
    port, metrics_port = int(env["TEXTCLF_PORT"]), int(env["TEXTCLF_METRICS_PORT"])
    assert (port, metrics_port) == (defaults.port, defaults.metrics_port), "compose moved the default ports"
    assert {str(port), str(metrics_port)} <= {str(p) for p in service["expose"]}
    # the health check is the real probe module, asked on the service's own port
    assert healthcheck_port(service["healthcheck"]["test"]) == port
    # the model volume is mounted where the service looks for models, read-only
    mounts = {v["target"]: v for v in service["volumes"]} if isinstance(service["volumes"][0], dict) else {
        v.split(":")[1]: {"source": v.split(":")[0], "read_only": v.endswith(":ro")} for v in service["volumes"]}
    repo_mount = mounts.get(env["TEXTCLF_MODEL_REPOSITORY"])
    assert repo_mount is not None, f"{name}: nothing mounted at TEXTCLF_MODEL_REPOSITORY"
    assert repo_mount["source"] == "models" and repo_mount.get("read_only"), repo_mount


def test_probe_module_is_runnable() -> None:
    assert importlib.util.find_spec("service.healthcheck") is not None
    done = subprocess.run([sys.executable, "-m", "service.healthcheck", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--address" in done.stdout, done.stderr
    # and it fails (exit 1) against a port where nothing listens, rather than hanging
    done = subprocess.run([sys.executable, "-m", "service.healthcheck", "--address", "127.0.0.1:1",
                           "--timeout", "1"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr


@pytest.mark.parametrize("name", SERVER_SERVICES)
def test_stop_grace_period_covers_the_drain(name: str) -> None:
    service = compose_service(name)
    grace = float(env_of(service)["TEXTCLF_GRACE_PERIOD"])
    stop = duration_seconds(service["stop_grace_period"])
    assert stop >= grace + DRAIN_MARGIN_S, f"{name}: stop_grace_period {stop}s < grace {grace}s + margin"
    assert stop <= grace + 30, f"{name}: stop_grace_period {stop}s is far beyond the drain time"
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_dependencies_and_replicas() -> None:
    server, nginx, init = compose_service("textclf"), compose_service("nginx"), compose_service("model-init")
    assert server["depends_on"]["model-init"]["condition"] == "service_completed_successfully"
    assert compose_service("textclf-gpu")["depends_on"]["model-init"]["condition"] == "service_completed_successfully"
    assert nginx["depends_on"]["textclf"]["condition"] == "service_healthy"
    assert server["deploy"]["replicas"] >= 2
    assert "ports" not in server, "replicas must not publish host ports (nginx is the entry point)"
    assert init.get("restart", "no") == "no"
    init_env = env_of(init)
    targets = {v["target"] if isinstance(v, dict) else v.split(":")[1]: v for v in init["volumes"]}
    assert init_env["TEXTCLF_MODEL_REPOSITORY"] in targets, "model-init does not write the model volume"


def test_gpu_profile_reserves_an_nvidia_device() -> None:
    gpu = compose_service("textclf-gpu")
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert env_of(gpu)["TEXTCLF_PROVIDERS"] == "cuda"
    assert gpu["build"]["args"]["VARIANT"] == "gpu"
    assert "textclf" in gpu["networks"]["default"]["aliases"], "GPU replicas must join nginx's upstream name"


def test_nginx_and_prometheus_point_at_the_server_ports() -> None:
    env = env_of(compose_service("textclf"))
    nginx_env = env_of(compose_service("nginx"))
    upstream = nginx_env["TEXTCLF_UPSTREAM_SERVERS"]
    assert re.fullmatch(r"(server textclf:(\d+)[^;]*;\s*)+", upstream), upstream
    assert set(re.findall(r"textclf:(\d+)", upstream)) == {env["TEXTCLF_PORT"]}
    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "textclf")
    assert job["metrics_path"] == "/metrics"
    assert [d["port"] for d in job["dns_sd_configs"]] == [int(env["TEXTCLF_METRICS_PORT"])]
    assert job["dns_sd_configs"][0]["names"] == ["textclf"]


def test_every_referenced_file_exists() -> None:
    checked: list[str] = []
    for name in ("model-init", "textclf", "textclf-gpu", "nginx", "prometheus"):
        service = compose_service(name)
        build = service.get("build")
        if build:
            dockerfile = Path(build["context"]) / build["dockerfile"]
            assert dockerfile.is_file(), dockerfile
            assert build["target"] in dockerfile_stages(), f"{name}: no stage {build['target']!r}"
            checked.append(str(dockerfile))
        for volume in service.get("volumes", []):
            if isinstance(volume, dict) and volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: missing {volume['source']}"
                checked.append(volume["source"])
            elif isinstance(volume, str) and volume.startswith(("/", ".")):
                source = (REPO / volume.split(":")[0]).resolve()
                assert source.exists(), f"{name}: missing {source}"
                checked.append(str(source))
    assert str(NGINX_TEMPLATE) in checked and str(PROMETHEUS_DIR) in checked, checked
    # Prometheus' own references, relative to its config file
    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    for pattern in prometheus["rule_files"]:
        assert list(PROMETHEUS_DIR.glob(pattern)), f"rule_files {pattern} matches nothing"
    for job in prometheus["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            for pattern in sd["files"]:
                assert (PROMETHEUS_DIR / pattern).parent.is_dir(), f"file_sd directory of {pattern} missing"
    # files the Dockerfile copies out of the build context must pass .dockerignore
    dockerignore = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    instructions = "\n".join(ln for ln in DOCKERFILE.read_text(encoding="utf-8").splitlines()
                             if not ln.lstrip().startswith("#"))
    for used in re.findall(r"\b(deploy/[\w./-]+)", instructions):
        if (REPO / used).is_file():
            assert f"!{used}" in dockerignore, f".dockerignore hides {used}"
    bootstrap = DEPLOY / "bootstrap_model.sh"
    assert bootstrap.is_file() and bootstrap.stat().st_mode & 0o111, "bootstrap script not executable"


def test_bootstrap_job_uses_real_cli_commands() -> None:
    """The one-shot job calls `textclf train` / `textclf export` with flags those CLIs define."""
    script = (DEPLOY / "bootstrap_model.sh").read_text(encoding="utf-8")
    from textclf_cli import COMMANDS

    for command in ("train", "export"):
        assert command in COMMANDS
        line = next(ln for ln in script.splitlines() if ln.strip().startswith(f"textclf {command} "))
        flags = [w for w in shlex.split(line.replace("${TEXTCLF_TRAIN_ARGS:-}", "")) if w.startswith("--")]
        source = (REPO / (COMMANDS[command][0].replace(".", "/") + ".py")).read_text(encoding="utf-8")
        for flag in flags:
            assert f'"{flag}"' in source, f"`textclf {command}` has no {flag} option"


# ---------------------------------------------------------------------------- Dockerfile
def test_dockerfile_serving_image() -> None:
    stages = dockerfile_stages()
    serve, build = stages["serve"], stages["serve-build"]
    assert re.search(r"^USER\s+textclf\s*$", serve, re.MULTILINE), "serving image must run as non-root"
    assert re.search(r"useradd .*--uid 10001", DOCKERFILE.read_text(encoding="utf-8"))
    healthcheck = re.search(r"^HEALTHCHECK .*\\\n\s*CMD (.+)$", serve, re.MULTILINE)
    assert healthcheck and "python -m service.healthcheck --address" in healthcheck.group(1)
    assert 'ENTRYPOINT ["python", "-m", "service"]' in serve
    assert re.search(r"pip install (--no-deps )?\.", build) and "torch" not in re.sub(r"#.*|torch leaked|import torch", "", build)
    assert "['tracing']" in build, "the serving image installs the tracing extra (opt-in at run time)"
    assert re.search(r'if python -c "import torch"', build), "the build must fail if torch leaks in"
    env = dict(re.findall(r"(TEXTCLF_\w+)=(\S+)", serve))
    defaults = Settings()
    assert int(env["TEXTCLF_PORT"]) == defaults.port and int(env["TEXTCLF_METRICS_PORT"]) == defaults.metrics_port
    assert set(env) <= SETTINGS_ENV, set(env) - SETTINGS_ENV
    assert re.search(rf"^EXPOSE {defaults.port} {defaults.metrics_port}\s*$", serve, re.MULTILINE)
    assert env["TEXTCLF_MODEL_REPOSITORY"] == env_of(compose_service("textclf"))["TEXTCLF_MODEL_REPOSITORY"]


def test_dockerfile_gpu_variant_and_train_target() -> None:
    args, stages = dockerfile_args(), dockerfile_stages()
    # GPU: onnxruntime-gpu at the same version as the pinned onnxruntime, selected by VARIANT
    assert args["ORT_GPU_VERSION"] == pyproject_pin("onnxruntime")
    assert 'if [ "$VARIANT" = "gpu" ]' in stages["serve-build"]
    assert "pip uninstall -y onnxruntime" in stages["serve-build"]
    assert "onnxruntime-gpu" in stages["serve-build"]
    # train: the exact torch pin of pyproject's train extra, from the PyTorch CPU index
    assert args["TORCH_VERSION"] == pyproject_pin("torch", "train") == "2.13.0"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    train = stages["train"]
    assert '"torch==${TORCH_VERSION}"' in train and '".[train]"' in train
    assert re.search(r"^USER\s+textclf\s*$", train, re.MULTILINE)
    assert 'ENTRYPOINT ["textclf-bootstrap-model"]' in train


# --------------------------------------------------------------------------------- nginx
def test_nginx_template_renders_to_a_valid_config(tmp_path: Path) -> None:
    nginx = require_tools("nginx")["nginx"]
    render = _load_render()
    nginx_env = env_of(compose_service("nginx"))
    template = NGINX_TEMPLATE.read_text(encoding="utf-8")
    name_filter = nginx_env["NGINX_ENVSUBST_FILTER"]
    assert render.placeholders(template, name_filter) <= set(nginx_env), "compose leaves a placeholder unset"
    # compose's values, except that the upstream name must resolve here: textclf -> 127.0.0.1
    env = dict(nginx_env, TEXTCLF_UPSTREAM_SERVERS=nginx_env["TEXTCLF_UPSTREAM_SERVERS"].replace(
        "server textclf:", "server 127.0.0.1:"))
    rendered = render.render(template, env, name_filter)
    assert "grpc_pass grpc://textclf_grpc;" in rendered
    assert re.search(r"listen 8001 http2;", rendered)
    assert "grpc_next_upstream error timeout" in rendered
    assert "$remote_addr" in rendered and "$upstream_addr" in rendered, "nginx variables were substituted"
    config = tmp_path / "nginx.conf"
    config.write_text(rendered, encoding="utf-8")
    done = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(config), "-e", str(tmp_path / "error.log"),
                           "-g", f"pid {tmp_path / 'nginx.pid'};"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _load_render() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_render", DEPLOY / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- prometheus
def test_promtool_checks_config_and_rules() -> None:
    promtool = require_tools("promtool")["promtool"]
    done = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=PROMETHEUS_DIR,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr
    rules = sorted(str(p) for p in (PROMETHEUS_DIR / "rules").glob("*.yml"))
    done = subprocess.run([promtool, "check", "rules", *rules], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    """Recording rules compute the right numbers and alerts fire (only) when they should."""
    promtool = require_tools("promtool")["promtool"]
    tests = sorted(str(p) for p in (PROMETHEUS_DIR / "tests").glob("*.yml"))
    assert tests
    done = subprocess.run([promtool, "test", "rules", *tests], cwd=PROMETHEUS_DIR / "tests",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_cover_latency_errors_and_queue_with_real_metrics() -> None:
    exported = metric_sample_names()
    records: dict[str, str] = {}
    alerts: dict[str, str] = {}
    for path in (PROMETHEUS_DIR / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                (records if "record" in rule else alerts)[rule.get("record") or rule["alert"]] = rule["expr"]
    for expr in list(records.values()) + list(alerts.values()):
        for name in re.findall(r"(?<![:\w])(textclf_[a-z_]+)(?![:\w])", expr):
            assert name in exported, f"{name} is not exported by service/metrics.py"
    assert any("histogram_quantile(0.50" in e for e in records.values()), "no p50 recording rule"
    assert any("histogram_quantile(0.99" in e for e in records.values()), "no p99 recording rule"
    assert any("errors:ratio" in name for name in records), "no error-ratio recording rule"
    assert any("error" in e and "ratio" in e for e in alerts.values()), "no error-ratio alert"
    assert any("queue" in e for e in alerts.values()), "no queue-saturation alert"
    # saturation is computed against the queue bound the replicas actually run with
    bound = int(env_of(compose_service("textclf"))["TEXTCLF_MAX_QUEUE_SIZE"])
    saturation = next(e for n, e in records.items() if "saturation" in n)
    assert saturation.rstrip().endswith(f"/ {bound}"), saturation


# ----------------------------------------------------------------------------------- k8s
def test_k8s_manifests_parse_with_required_fields() -> None:
    objects = k8s_docs()
    for key, obj in objects.items():
        assert obj.get("apiVersion") and obj.get("kind"), key
        if obj["kind"] != "Kustomization":
            assert obj["metadata"]["name"], key
    for kind in ("Deployment/textclf", "Service/textclf-headless", "HorizontalPodAutoscaler/textclf",
                 "ServingRuntime/textclf-grpc-v2", "InferenceService/textclf-news"):
        assert kind in objects, f"deploy/k8s/ lacks {kind}"
    kustomization = objects["Kustomization/kustomization"]
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert objects["Deployment/textclf"]["spec"]["template"]["spec"]["containers"]


def test_k8s_deployment_matches_compose() -> None:
    objects = k8s_docs()
    compose = compose_service("textclf")
    compose_env_ = env_of(compose)
    deployment = objects["Deployment/textclf"]
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = next(c for c in pod["containers"] if c["name"] == "textclf")
    assert container["image"] == compose["image"]
    env = k8s_env(container)
    assert set(k for k in env if k.startswith("TEXTCLF_")) <= SETTINGS_ENV
    all_env_names = {e["name"] for e in container["env"]}
    assert {n for n in all_env_names if n.startswith("TEXTCLF_")} <= SETTINGS_ENV
    for name, value in env.items():
        if name in compose_env_:
            assert value == compose_env_[name], f"{name}: k8s {value!r} != compose {compose_env_[name]!r}"
    load_settings([], environ=env)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(compose_env_["TEXTCLF_PORT"]), "metrics": int(compose_env_["TEXTCLF_METRICS_PORT"])}
    compose_probe = compose["healthcheck"]["test"][1:]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == compose_probe, probe
    assert pod["terminationGracePeriodSeconds"] == duration_seconds(compose["stop_grace_period"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[env["TEXTCLF_MODEL_REPOSITORY"]]["readOnly"] is True
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == compose_env_["TEXTCLF_METRICS_PORT"]


def test_replicas_do_not_poll_between_calls() -> None:
    """Every deployed replica runs with ``idle_spin_us`` 0: replicas share cores, and polling after
    each call is CPU that a quota and a CPU-utilisation autoscaler count (0.2 -> 0.9 cores at 400
    sparse calls/s, bench/results/idle_spin_cost.json); the bare service keeps its default."""
    objects = k8s_docs()
    deployed = {name: env_of(compose_service(name)) for name in SERVER_SERVICES}
    deployed["Deployment/textclf"] = k8s_env(objects["Deployment/textclf"]["spec"]["template"]["spec"]["containers"][0])
    deployed["ServingRuntime/textclf-grpc-v2"] = k8s_env(objects["ServingRuntime/textclf-grpc-v2"]["spec"]["containers"][0])
    for name, env in deployed.items():
        settings = load_settings([], environ={k: v for k, v in env.items() if k.startswith("TEXTCLF_")})
        assert settings.idle_spin_us == 0, f"{name} polls between calls"
    assert Settings().idle_spin_us > 0


def test_k8s_headless_service_and_hpa() -> None:
    objects = k8s_docs()
    deployment = objects["Deployment/textclf"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    service = objects["Service/textclf-headless"]["spec"]
    assert service["clusterIP"] == "None", "client-side gRPC balancing needs a headless Service"
    assert service["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["ports"]} <= container_ports
    hpa = objects["HorizontalPodAutoscaler/textclf"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "textclf"}
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods_metrics == ["textclf_queue_depth"]
    assert "textclf_queue_depth" in metric_sample_names()
    adapter = yaml.safe_load(objects["ConfigMap/textclf-prometheus-adapter-rules"]["data"]["config.yaml"])
    assert any(r["name"]["as"] == "textclf_queue_depth" for r in adapter["rules"])
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_kserve_runtime_and_inference_service() -> None:
    objects = k8s_docs()
    compose = compose_service("textclf")
    runtime = objects["ServingRuntime/textclf-grpc-v2"]
    isvc = objects["InferenceService/textclf-news"]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert "grpc-v2" in runtime["spec"]["protocolVersions"]
    container = runtime["spec"]["containers"][0]
    assert container["name"] == "kserve-container" and container["image"] == compose["image"]
    env = k8s_env(container)
    assert set(env) <= SETTINGS_ENV
    load_settings([], environ=env)
    assert env["TEXTCLF_MODEL_REPOSITORY"] == "/mnt/models", "KServe mounts storageUri at /mnt/models"
    h2c = next(p for p in container["ports"] if p["name"] == "h2c")
    assert h2c["containerPort"] == int(env["TEXTCLF_PORT"]) == int(env_of(compose)["TEXTCLF_PORT"])
    assert container["readinessProbe"]["exec"]["command"] == compose["healthcheck"]["test"][1:]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "grpc-v2"
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["storageUri"].startswith("pvc://" + objects["PersistentVolumeClaim/textclf-models"]["metadata"]["name"])


def test_deployment_doc_covers_the_pieces() -> None:
    doc = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    for needle in ("docker-compose up", "--profile gpu", "install_test_deps.sh", "prometheus-adapter",
                   "ServingRuntime", "InferenceService", "headless", "HorizontalPodAutoscaler",
                   "retry", "stop_grace_period"):
        assert needle in doc, f"docs/deployment.md does not mention {needle}"
    for path in K8S.glob("*.yaml"):
        assert path.name in doc, f"docs/deployment.md does not describe deploy/k8s/{path.name}"
