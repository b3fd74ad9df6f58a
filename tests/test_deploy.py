"""Deployment manifests: parse every file and check what must agree across them.

There is no Docker engine or Kubernetes API in CI, so the manifests cannot be applied. Instead
this module catches the mistakes that actually break deployments of this stack:

* drift between files (image tag, Ray/MLflow versions, ports, env names, secret names/keys,
  the init SQL duplicated into a ConfigMap, RayCluster vs. RayJob cluster specs);
* options that do not exist: MLflow server and ``ray start`` argument lists are parsed by the
  real click commands of the pinned versions, and the cluster-launcher YAML is validated
  against Ray's own ``ray-schema.json``;
* security regressions: plaintext secrets, dashboards/ports exposed beyond loopback, MLflow
  without basic-auth.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import re
import shlex
import tomllib
from configparser import ConfigParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

NAMESPACE = "dlor-scale"
MLFLOW_PORT, GCS_PORT, DASHBOARD_PORT, CLIENT_PORT = 5000, 6379, 8265, 10001
OUTPUT_DIR = "/mnt/dlor-output"
AUTH_INI_IN_IMAGE = "/opt/dlor-scale/deploy/mlflow/basic_auth.ini"
LAUNCH = "dlor-scale launch studies/budget.yaml --address auto"
# Env names the dlor-scale package reads; every Ray node / driver environment must have them.
DRIVER_ENV = {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
              "DLOR_OPTUNA_STORAGE", "DLOR_OUTPUT_DIR"}
SENSITIVE = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)
PLACEHOLDER = "CHANGE_ME"


# --------------------------------------------------------------------------- loading helpers
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> tuple:
    return tuple(d for d in yaml.load_all(path.read_text(), Loader=_Loader) if d is not None)


def _load_all(path: Path) -> list[dict]:
    """All documents of a YAML file (parsed once per session; callers get private copies)."""
    return copy.deepcopy(list(_parse(path)))


def _k8s_docs() -> list[tuple[str, dict]]:
    out = []
    for p in sorted(K8S.glob("*.yaml")):
        if p.name == "kustomization.yaml":
            continue
        out += [(p.name, d) for d in _load_all(p)]
    return out


def _docs(kind: str, name: str | None = None) -> list[dict]:
    return [d for _, d in _k8s_docs()
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def _one(kind: str, name: str) -> dict:
    docs = _docs(kind, name)
    assert len(docs) == 1, f"expected exactly one {kind}/{name}, found {len(docs)}"
    return docs[0]


def _compose() -> dict:
    return _load_all(DEPLOY / "docker-compose.yml")[0]


def _launcher() -> dict:
    return _load_all(DEPLOY / "ray-cluster.yaml")[0]


def _env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k.strip()] = v.strip()
    return env


def _pin(package: str) -> str:
    for dep in PYPROJECT["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError(f"{package} is not pinned with == in pyproject.toml")


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M))


def _pod_specs() -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod template in the k8s manifests, RayJob included."""
    out = []
    for fname, d in _k8s_docs():
        spec = d.get("spec", {})
        if d["kind"] in ("Deployment", "StatefulSet"):
            out.append((f"{fname}:{d['metadata']['name']}", spec["template"]["spec"]))
        elif d["kind"] in ("RayCluster", "RayJob"):
            rc = spec if d["kind"] == "RayCluster" else spec["rayClusterSpec"]
            out.append((f"{fname}:head", rc["headGroupSpec"]["template"]["spec"]))
            for g in rc["workerGroupSpecs"]:
                out.append((f"{fname}:{g['groupName']}", g["template"]["spec"]))
    return out


def _ray_cluster_specs() -> list[tuple[str, dict]]:
    return [("raycluster.yaml", _one("RayCluster", "dlor-scale")["spec"]),
            ("rayjob.yaml", _one("RayJob", "dlor-scale-budget")["spec"]["rayClusterSpec"])]


def _ray_containers() -> list[tuple[str, dict]]:
    out = []
    for where, rc in _ray_cluster_specs():
        out.append((f"{where}:head", rc["headGroupSpec"]["template"]["spec"]["containers"][0]))
        for g in rc["workerGroupSpecs"]:
            out.append((f"{where}:{g['groupName']}", g["template"]["spec"]["containers"][0]))
    return out


def _env_map(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _mlflow_container() -> dict:
    return _one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]


def _compose_mlflow_args() -> list[str]:
    cmd = _compose()["services"]["mlflow"]["command"]
    i = cmd.index("server")
    assert cmd[i - 1] == "mlflow"
    return cmd[i + 1:]


def _opt(args: list[str], name: str) -> str:
    """Value of ``--name VALUE`` or ``--name=VALUE`` in an argument list."""
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {args}")


def _ray_start_args(command: str) -> list[str]:
    """Arguments after ``ray start`` in a shell command line (launcher start commands)."""
    tokens = shlex.split(command.replace(";", " ; ").replace("&&", " && "))
    i = next(i for i in range(len(tokens) - 1) if tokens[i:i + 2] == ["ray", "start"])
    args = []
    for t in tokens[i + 2:]:
        if t in (";", "&&", "||"):
            break
        args.append(t)
    return args


def _walk_strings(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_strings(v, path + (str(k),))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk_strings(v, path + (str(i),))
    elif isinstance(obj, str):
        yield path, obj


def _all_yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


# --------------------------------------------------------------------------- parsing
def test_every_manifest_parses_and_is_well_formed():
    files = _all_yaml_files()
    assert {p.relative_to(DEPLOY).as_posix() for p in files} >= {
        "docker-compose.yml", "ray-cluster.yaml", "k8s/raycluster.yaml", "k8s/rayjob.yaml",
        "k8s/mlflow.yaml", "k8s/postgres.yaml", "k8s/minio.yaml", "k8s/secrets.example.yaml"}
    for p in files:
        assert _load_all(p), f"{p} is empty"
    seen = set()
    for fname, d in _k8s_docs():
        assert {"apiVersion", "kind", "metadata"} <= d.keys(), fname
        key = (d["kind"], d["metadata"]["name"])
        assert key not in seen, f"duplicate {key} ({fname})"
        seen.add(key)
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, f"{fname}: {key} namespace"
    for kind in ("RayCluster", "RayJob"):
        assert all(d["apiVersion"] == "ray.io/v1" for d in _docs(kind))
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
    assert "secrets.example.yaml" not in kust["resources"]


def test_k8s_manifests_use_no_yaml_anchors():
    """kubectl -f resolves anchors, but kustomize (kubectl -k) historically rejected them."""
    for p in K8S.glob("*.yaml"):
        text = re.sub(r"#.*", "", p.read_text())
        assert not re.search(r":\s+[&*][\w-]+\s*$", text, re.M), f"{p.name} uses YAML anchors"


# --------------------------------------------------------------------------- versions / image
def _dlor_images() -> list[tuple[str, str]]:
    imgs = []
    c = _compose()
    for name, svc in c["services"].items():
        if "build" in svc or "dlor-scale" in svc.get("image", ""):
            imgs.append((f"compose:{name}", svc["image"]))
    imgs.append(("ray-cluster.yaml", _launcher()["docker"]["image"]))
    for where, pod in _pod_specs():
        for ctr in pod.get("initContainers", []) + pod["containers"]:
            if "dlor-scale" in ctr["image"]:
                imgs.append((f"{where}:{ctr['name']}", ctr["image"]))
    return imgs


def test_same_image_name_and_tag_everywhere():
    imgs = _dlor_images()
    distinct = {i for _, i in imgs}
    assert len(distinct) == 1, imgs
    image = distinct.pop()
    name, tag = image.rsplit(":", 1)
    assert tag == PYPROJECT["project"]["version"], "image tag must be the package version"
    # every dlor-scale consumer is covered: compose (mlflow + 3 ray), launcher, k8s mlflow
    # (+ init container) and the Ray pods of RayCluster and RayJob
    wheres = {w for w, _ in imgs}
    assert {"compose:mlflow", "compose:ray-head", "compose:ray-worker",
            "raycluster.yaml:head:ray-head", "rayjob.yaml:gpu:ray-worker",
            "mlflow.yaml:mlflow:mlflow"} <= wheres
    # the documented build command produces exactly this tag
    assert f"-t {image} ." in (DEPLOY / "Dockerfile").read_text()
    assert image in (DEPLOY / "README.md").read_text()


def test_versions_match_pyproject():
    ray_v, mlflow_v = _pin("ray"), _pin("mlflow")
    assert ray_v == "2.60.0"
    args = _dockerfile_args()
    assert args["RAY_VERSION"] == ray_v
    assert args["MLFLOW_VERSION"] == mlflow_v
    torch_spec = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    assert args["TORCH_VERSION"] in SpecifierSet(torch_spec[len("torch"):])
    base = args["PYTHON_IMAGE"]
    m = re.match(r"python:(\d+\.\d+)", base)
    assert m and m.group(1) == "3.11" and "slim" in base
    assert f"3.11.0" in SpecifierSet(PYPROJECT["project"]["requires-python"])
    for where, rc in _ray_cluster_specs():
        assert rc["rayVersion"] == ray_v, where
    # the launcher refuses an image with another Ray than the pin
    setup = " ".join(_launcher()["setup_commands"])
    assert f"ray.__version__ == '{ray_v}'" in setup
    # extras the deployment needs beyond pyproject: job API/dashboard and MLflow basic-auth
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert '"ray[default,tune]==${RAY_VERSION}"' in dockerfile
    assert '"mlflow[auth]==${MLFLOW_VERSION}"' in dockerfile


def test_dockerfile_layout_matches_manifest_paths():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "WORKDIR /opt/dlor-scale" in text
    assert re.search(r"^COPY .*\bdeploy \./deploy$", text, re.M)   # basic_auth.ini, ensure_bucket
    assert re.search(r"^COPY .*\bstudies \./studies$", text, re.M)  # RayJob entrypoint path
    assert f"DLOR_OUTPUT_DIR={OUTPUT_DIR}" in text
    assert re.search(r"^USER ray$", text, re.M), "image must not run as root"
    exposed = set(re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split())
    assert exposed == {str(p) for p in (MLFLOW_PORT, GCS_PORT, DASHBOARD_PORT, CLIENT_PORT)}
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", "deploy/.env"} <= set(ignore)
    for ctr_path in (AUTH_INI_IN_IMAGE, "/opt/dlor-scale/deploy/mlflow/ensure_bucket.py"):
        assert (ROOT / ctr_path.removeprefix("/opt/dlor-scale/")).is_file()


# --------------------------------------------------------------------------- ports
def test_ports_are_consistent():
    # MLflow
    for args in (_compose_mlflow_args(), _mlflow_container()["args"]):
        assert _opt(args, "--port") == str(MLFLOW_PORT)
        assert _opt(args, "--host") == "0.0.0.0"  # inside the container/pod only
    assert _compose()["services"]["mlflow"]["ports"] == [f"127.0.0.1:{MLFLOW_PORT}:{MLFLOW_PORT}"]
    svc = _one("Service", "mlflow")
    assert [p["port"] for p in svc["spec"]["ports"]] == [MLFLOW_PORT]
    assert [p["containerPort"] for p in _mlflow_container()["ports"]] == [MLFLOW_PORT]
    for uri in _tracking_uris().values():
        assert urlsplit(uri).port == MLFLOW_PORT, uri

    # Ray, compose
    svcs = _compose()["services"]
    head = svcs["ray-head"]["command"]
    assert f"--port={GCS_PORT}" in head and f"--dashboard-port={DASHBOARD_PORT}" in head
    assert f"--ray-client-server-port={CLIENT_PORT}" in head
    for w in ("ray-worker", "ray-worker-gpu"):
        assert f"--address=ray-head:{GCS_PORT}" in svcs[w]["command"]
    assert svcs["ray-head"]["ports"] == [f"127.0.0.1:{DASHBOARD_PORT}:{DASHBOARD_PORT}"]

    # Ray, cluster launcher
    cfg = _launcher()
    head_args = _ray_start_args(cfg["head_start_ray_commands"][-1])
    assert _opt(head_args, "--port") == str(GCS_PORT)
    assert _opt(head_args, "--dashboard-port") == str(DASHBOARD_PORT)
    assert _opt(head_args, "--ray-client-server-port") == str(CLIENT_PORT)
    worker_args = _ray_start_args(cfg["worker_start_ray_commands"][-1])
    assert _opt(worker_args, "--address") == f"$RAY_HEAD_IP:{GCS_PORT}"

    # Ray, KubeRay (named ports the operator relies on)
    for where, rc in _ray_cluster_specs():
        ports = {p["name"]: p["containerPort"]
                 for p in rc["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
        assert ports["gcs-server"] == GCS_PORT and ports["dashboard"] == DASHBOARD_PORT
        assert ports["client"] == CLIENT_PORT, where


# --------------------------------------------------------------------------- env contract
def _tracking_uris() -> dict[str, str]:
    uris = {"compose": _compose()["x-ray-env"]["MLFLOW_TRACKING_URI"],
            "launcher": _env_file(DEPLOY / "ray-cluster.env.example")["MLFLOW_TRACKING_URI"]}
    for where, ctr in _ray_containers():
        uris[where] = _env_map(ctr)["MLFLOW_TRACKING_URI"]["value"]
    return uris


def test_every_ray_node_gets_the_same_env_names():
    compose = _compose()
    for name in ("ray-head", "ray-worker", "ray-worker-gpu"):
        env = compose["services"][name]["environment"]
        assert DRIVER_ENV <= env.keys(), name
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")
        assert env["DLOR_OUTPUT_DIR"] == OUTPUT_DIR
        mounts = compose["services"][name]["volumes"]
        assert f"dlor-output:{OUTPUT_DIR}" in mounts, name

    envs = [(w, _env_map(c)) for w, c in _ray_containers()]
    for where, env in envs:
        assert DRIVER_ENV <= env.keys(), where
        assert env["DLOR_OUTPUT_DIR"]["value"] == OUTPUT_DIR
        # the operator injects RAY_AUTH_*; a manual value would fight with it
        assert "RAY_AUTH_TOKEN" not in env and "RAY_AUTH_MODE" not in env
    assert all(e == envs[0][1] for _, e in envs), "Ray pods must share one env"

    launcher_env = _env_file(DEPLOY / "ray-cluster.env.example")
    assert DRIVER_ENV <= launcher_env.keys()
    assert launcher_env["DLOR_OUTPUT_DIR"] == OUTPUT_DIR
    assert launcher_env["RAY_AUTH_MODE"] == "token"
    run_opts = " ".join(_launcher()["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in run_opts
    assert f"--env RAY_AUTH_TOKEN_PATH={launcher_env['RAY_AUTH_TOKEN_PATH']}" in run_opts
    assert f"--env DLOR_OUTPUT_DIR={OUTPUT_DIR}" in run_opts
    for cmd in _launcher()["head_start_ray_commands"] + _launcher()["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd
    # the token file and the env file reach every node through file_mounts
    token_dir = str(Path(launcher_env["RAY_AUTH_TOKEN_PATH"]).parent)
    assert token_dir in _launcher()["file_mounts"]

    for where, rc in _ray_cluster_specs():
        assert rc["authOptions"] == {"mode": "token"}, where


def test_harness_env_uses_the_deployment_names(tmp_path):
    from dlor_scale.testing.harness import LocalCluster

    c = LocalCluster(tmp_path, mlflow_auth=True)
    env = c._build_env()
    assert set(env) == DRIVER_ENV | {"RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    assert env["RAY_AUTH_MODE"] == "token"


def test_tracking_uris_are_allowed_by_the_mlflow_servers():
    """MLflow 3 answers 403 to Host headers not in --allowed-hosts: the URI the Ray pods use
    must be in the server's list (exact host:port match)."""
    k8s_allowed = _opt(_mlflow_container()["args"], "--allowed-hosts").split(",")
    compose_allowed_expr = _opt(_compose_mlflow_args(), "--allowed-hosts")
    m = re.fullmatch(r"\$\{MLFLOW_ALLOWED_HOSTS:-(.+)\}", compose_allowed_expr)
    assert m, compose_allowed_expr
    compose_allowed = m.group(1).split(",")
    assert _env_file(DEPLOY / ".env.example")["MLFLOW_ALLOWED_HOSTS"].split(",") == compose_allowed
    for where, uri in _tracking_uris().items():
        netloc = urlsplit(uri).netloc
        if where == "compose":
            assert netloc in compose_allowed
        elif where != "launcher":  # external host: documented, set by the operator
            assert netloc in k8s_allowed, (where, netloc)
    # kubectl port-forward / local browsing
    for allowed in (k8s_allowed, compose_allowed):
        assert {f"localhost:{MLFLOW_PORT}", f"127.0.0.1:{MLFLOW_PORT}"} <= set(allowed)
    assert "*" not in k8s_allowed + compose_allowed
    # the FQDN points at the Service that exists
    host = urlsplit(_tracking_uris()["raycluster.yaml:head"]).hostname
    assert host == f"mlflow.{NAMESPACE}.svc.cluster.local"


# --------------------------------------------------------------------------- launch command
def test_launch_command():
    rayjob = _one("RayJob", "dlor-scale-budget")["spec"]
    assert rayjob["entrypoint"] == LAUNCH
    assert rayjob["submissionMode"] in ("SidecarMode", "K8sJobMode")
    assert rayjob["shutdownAfterJobFinishes"] is True
    study = LAUNCH.split()[2]
    assert (ROOT / study).is_file(), f"{study} must exist (baked into the image)"
    assert PYPROJECT["project"]["scripts"]["dlor-scale"] == "dlor_scale.cli:app"
    for path in ("docker-compose.yml", "ray-cluster.yaml", "README.md"):
        assert LAUNCH in (DEPLOY / path).read_text(), path
    # working dir of the job driver = image WORKDIR, where studies/ lives
    for where, ctr in _ray_containers():
        assert ctr["workingDir"] == "/opt/dlor-scale", where


def test_launch_command_matches_cli_when_available():
    """Once dlor_scale.cli exists, its `launch` must accept what the manifests pass."""
    if importlib.util.find_spec("dlor_scale.cli") is None:
        return  # CLI not written yet; test_launch_command covers the manifest side
    import typer.main

    from dlor_scale.cli import app

    cmd = typer.main.get_command(app)
    launch = cmd.commands["launch"]
    opts = {o for p in launch.params for o in getattr(p, "opts", [])}
    assert {"--address", "--resume", "--dry-run"} <= opts
    assert "status" in cmd.commands
    launch.make_context("launch", LAUNCH.split()[2:])


# --------------------------------------------------------------------------- MLflow server
def _validate_mlflow_args(args: list[str]) -> dict:
    from mlflow.cli import server

    return server.make_context("server", list(args)).params


def test_mlflow_server_args_are_valid_and_use_basic_auth():
    for where, args in (("compose", _compose_mlflow_args()), ("k8s", _mlflow_container()["args"])):
        # compose interpolation is resolved by compose; give click a literal
        args = [re.sub(r"\$\{[A-Z_]+:-(.+)\}", r"\1", a) for a in args]
        params = _validate_mlflow_args(args)
        assert params["app_name"] == "basic-auth", where
        backend = urlsplit(params["backend_store_uri"])
        assert backend.scheme == "postgresql+psycopg2" and backend.password is None, where
        assert (backend.hostname, backend.port, backend.path) == ("postgres", 5432, "/mlflow")
        assert params["artifacts_destination"] == "s3://mlflow-artifacts", where
        assert params["serve_artifacts"] is True  # clients never need S3 credentials

    compose_env = _compose()["services"]["mlflow"]["environment"]
    k8s_env = _env_map(_mlflow_container())
    for env_name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "PGPASSWORD",
                     "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert compose_env[env_name].startswith("${"), env_name
        assert "secretKeyRef" in k8s_env[env_name]["valueFrom"], env_name
    for env in (compose_env, {k: v.get("value") for k, v in k8s_env.items()}):
        assert env["MLFLOW_AUTH_CONFIG_PATH"] == AUTH_INI_IN_IMAGE
        assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    # the S3 endpoint names the MinIO Service/compose service and its API port
    assert "minio" in _compose()["services"]
    assert {p["name"]: p["port"] for p in _one("Service", "minio")["spec"]["ports"]}["s3"] == 9000
    # the bucket is created before the server starts
    init = _one("Deployment", "mlflow")["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"][-1] == "s3://mlflow-artifacts"
    assert "ensure_bucket.py s3://mlflow-artifacts" in _compose()["services"]["mlflow"]["command"][2]


def test_basic_auth_ini(monkeypatch):
    path = DEPLOY / "mlflow" / "basic_auth.ini"
    raw = ConfigParser()
    raw.read(path)
    assert "admin_password" not in raw["mlflow"], "admin password must come from the env only"
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    from mlflow.server.auth.config import read_auth_config

    cfg = read_auth_config()
    assert cfg.default_permission == "READ"
    assert cfg.admin_password is None  # => the server refuses to start without the env var
    db = urlsplit(cfg.database_uri)
    assert db.password is None and db.hostname == "postgres" and db.path == "/mlflow_auth"
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "from-env")
    assert read_auth_config().admin_password == "from-env"


def test_postgres_databases_and_init_sql_agree():
    sql = (DEPLOY / "postgres" / "init-databases.sql").read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+) OWNER dlor", sql))
    cm = _one("ConfigMap", "postgres-init")
    assert cm["data"]["10-databases.sql"] == sql, "ConfigMap must equal init-databases.sql"
    pg_env = {e["name"]: e for e in _one("StatefulSet", "postgres")["spec"]["template"]["spec"]
              ["containers"][0]["env"]}
    compose_pg = _compose()["services"]["postgres"]["environment"]
    assert pg_env["POSTGRES_DB"]["value"] == compose_pg["POSTGRES_DB"] == "mlflow"
    assert pg_env["POSTGRES_USER"]["value"] == compose_pg["POSTGRES_USER"] == "dlor"
    assert created == {"mlflow_auth", "optuna"}
    assert "./postgres/init-databases.sql:/docker-entrypoint-initdb.d/10-databases.sql:ro" in \
        _compose()["services"]["postgres"]["volumes"]
    # the Optuna URL (compose literal, k8s Secret template) points at that server/database
    for url in (_compose()["x-ray-env"]["DLOR_OPTUNA_STORAGE"],
                _secret_template()["dlor-scale-optuna"]["storage-url"]):
        u = urlsplit(url)
        assert (u.scheme, u.hostname, u.port, u.path) == ("postgresql+psycopg2", "postgres",
                                                          5432, "/optuna")
    assert _one("Service", "postgres")["spec"]["ports"][0]["port"] == 5432
    # images pinned identically in compose and k8s
    assert _compose()["services"]["postgres"]["image"] == \
        _one("StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert _compose()["services"]["minio"]["image"] == \
        _one("StatefulSet", "minio")["spec"]["template"]["spec"]["containers"][0]["image"]
    for img in (_compose()["services"]["postgres"]["image"], _compose()["services"]["minio"]["image"]):
        assert ":" in img and not img.endswith(":latest")


# --------------------------------------------------------------------------- secrets
def _secret_template() -> dict[str, dict[str, str]]:
    docs = _load_all(K8S / "secrets.example.yaml")
    assert all(d["kind"] == "Secret" for d in docs)
    return {d["metadata"]["name"]: d["stringData"] for d in docs}


def test_secret_refs_resolve_to_the_template():
    template = _secret_template()
    refs = set()
    for where, pod in _pod_specs():
        for ctr in pod.get("initContainers", []) + pod["containers"]:
            for e in ctr.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
                    assert ref["key"] in template.get(ref["name"], {}), (where, e["name"], ref)
    # nothing in the template is unused
    assert refs == {(n, k) for n, data in template.items() for k in data}
    # real Secret objects only ever live in the example file
    for fname, d in _k8s_docs():
        if d["kind"] == "Secret":
            assert fname == "secrets.example.yaml"


def _is_placeholder(value: str) -> bool:
    return PLACEHOLDER in value or re.fullmatch(r"\$\{[A-Za-z_]+(:[?-][^}]*)?\}", value) is not None


def test_no_plaintext_secrets():
    problems = []
    # 1. URLs with credentials anywhere in deploy/
    for p in [*_all_yaml_files(), *DEPLOY.rglob("*.example"), DEPLOY / "mlflow" / "basic_auth.ini",
              DEPLOY / "Dockerfile", DEPLOY / "README.md"]:
        for m in re.finditer(r"\b[a-z][a-z0-9+.-]*://([^/\s:@'\"]+):([^@\s/'\"]+)@", p.read_text()):
            if not _is_placeholder(m.group(2)) and not m.group(2).startswith("$"):
                problems.append(f"{p.name}: password in URL {m.group(0)}")
        # pasted tokens/keys: long hex or base64-ish runs
        for m in re.finditer(r"\b[0-9a-f]{32,}\b|\b[A-Za-z0-9+]{40,}={0,2}", p.read_text()):
            problems.append(f"{p.name}: secret-looking literal {m.group(0)[:12]}...")

    # 2. k8s: sensitive env vars only via secretKeyRef; Secret data only placeholders
    for where, pod in _pod_specs():
        for ctr in pod.get("initContainers", []) + pod["containers"]:
            for e in ctr.get("env", []):
                if SENSITIVE.search(e["name"]) and "value" in e:
                    problems.append(f"{where}: {e['name']} has a literal value")
    for name, data in _secret_template().items():
        for k, v in data.items():
            if SENSITIVE.search(k) or re.search(r"key|password|token", k, re.I):
                if not _is_placeholder(v):
                    problems.append(f"secrets.example.yaml {name}.{k} is not a placeholder")

    # 3. compose: sensitive values only via ${VAR:?...} interpolation
    for path, value in _walk_strings(_compose()):
        if SENSITIVE.search(path[-1]) and not _is_placeholder(value):
            problems.append(f"compose {'.'.join(path)} = literal")

    # 4. env-file templates: every sensitive value is CHANGE_ME
    for f in (DEPLOY / ".env.example", DEPLOY / "ray-cluster.env.example"):
        for k, v in _env_file(f).items():
            if SENSITIVE.search(k) and k not in ("RAY_AUTH_TOKEN_PATH",) and v != PLACEHOLDER:
                problems.append(f"{f.name}: {k} must be {PLACEHOLDER}")

    # 5. launcher: token only as a file path, never inline
    cfg_text = (DEPLOY / "ray-cluster.yaml").read_text()
    if re.search(r"RAY_AUTH_TOKEN=", cfg_text):
        problems.append("ray-cluster.yaml sets RAY_AUTH_TOKEN inline")
    # 6. Dockerfile: no secrets baked into layers
    for m in re.finditer(r"^(?:ENV|ARG)\s+(.+)$", (DEPLOY / "Dockerfile").read_text(), re.M):
        if SENSITIVE.search(m.group(1)):
            problems.append(f"Dockerfile: {m.group(0)}")
    assert not problems, "\n".join(problems)


def test_compose_variables_are_documented_in_env_example():
    text = re.sub(r"(?m)^\s*#.*$", "", (DEPLOY / "docker-compose.yml").read_text())
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    defaulted = set(re.findall(r"\$\{([A-Z_]+):-", text))
    example = _env_file(DEPLOY / ".env.example")
    assert required <= example.keys(), required - example.keys()
    assert example.keys() <= required | defaulted, example.keys() - required - defaulted
    bare = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)\}", text))
    assert not bare, f"use ${{VAR:?msg}} or ${{VAR:-default}}, not bare: {bare}"


# --------------------------------------------------------------------------- exposure
def test_dashboard_and_ports_bound_to_loopback():
    # launcher: dashboard/job API only on 127.0.0.1 (reach it via `ray dashboard` SSH tunnel)
    head_args = _ray_start_args(_launcher()["head_start_ray_commands"][-1])
    assert _opt(head_args, "--dashboard-host") == "127.0.0.1"
    assert "0.0.0.0" not in (DEPLOY / "ray-cluster.yaml").read_text()

    # compose: every published port is bound to the host's loopback
    for name, svc in _compose()["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"
    assert not {"postgres", "minio"} & {n for n, s in _compose()["services"].items() if "ports" in s}

    # k8s: nothing leaves the cluster; the pod-IP dashboard is fenced by a NetworkPolicy
    for fname, d in _k8s_docs():
        assert d["kind"] != "Ingress", fname
        if d["kind"] == "Service":
            assert d["spec"].get("type", "ClusterIP") == "ClusterIP", fname
    for where, rc in _ray_cluster_specs():
        assert rc["headGroupSpec"]["serviceType"] == "ClusterIP", where
        labels = rc["headGroupSpec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "dlor-scale-ray"
        for g in rc["workerGroupSpecs"]:
            assert g["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "dlor-scale-ray"
    pol = _one("NetworkPolicy", "ray-nodes")["spec"]
    assert pol["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "dlor-scale-ray"}
    for rule in pol["ingress"]:
        peers = rule["from"]
        if any("namespaceSelector" in p for p in peers):
            assert rule["ports"] == [{"protocol": "TCP", "port": DASHBOARD_PORT}]
        else:
            assert peers == [{"podSelector": {"matchLabels":
                                              {"app.kubernetes.io/name": "dlor-scale-ray"}}}]
    for name in ("mlflow", "postgres", "minio"):
        assert _one("NetworkPolicy", name)["spec"]["policyTypes"] == ["Ingress"]


# --------------------------------------------------------------------------- Ray specifics
def test_launcher_config_validates_against_ray_schema():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _launcher()
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    validate_config(prepare_config(copy.deepcopy(cfg)))
    assert cfg["provider"]["type"] == "aws"
    gpu = [t for t in cfg["available_node_types"].values() if t.get("resources", {}).get("GPU")]
    assert gpu, "needs a GPU worker group"
    assert "--gpus all" in cfg["docker"]["worker_run_options"]
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"]["CPU"] == 0
    assert any("pip install" in c and "dlor-scale" in c for c in cfg["setup_commands"])
    assert ".venv" in cfg["rsync_exclude"]


def test_ray_start_arguments_are_valid():
    from ray.scripts.scripts import start

    arg_lists = [("launcher head", _ray_start_args(_launcher()["head_start_ray_commands"][-1])),
                 ("launcher worker", _ray_start_args(_launcher()["worker_start_ray_commands"][-1]))]
    for name in ("ray-head", "ray-worker", "ray-worker-gpu"):
        cmd = _compose()["services"][name]["command"]
        assert cmd[:2] == ["ray", "start"] and "--block" in cmd, name
        arg_lists.append((f"compose {name}",
                          [re.sub(r"\$\{[A-Z_]+:-(.+)\}", r"\1", a) for a in cmd[2:]]))
    for where, rc in _ray_cluster_specs():
        params = rc["headGroupSpec"]["rayStartParams"]
        arg_lists.append((f"{where} head", ["--head", *(f"--{k}={v}" for k, v in params.items())]))
    for where, args in arg_lists:
        start.make_context("start", list(args))  # raises on unknown options / bad values


def test_kuberay_cluster_specs_in_sync_and_gpu_workers():
    (_, rc), (_, job_rc) = _ray_cluster_specs()
    assert rc == job_rc, "rayjob.yaml rayClusterSpec must equal raycluster.yaml spec"
    assert rc["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for g in rc["workerGroupSpecs"]:
        ctr = g["template"]["spec"]["containers"][0]
        assert ctr["resources"]["limits"]["nvidia.com/gpu"] >= 1
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    pvc = _one("PersistentVolumeClaim", "dlor-scale-output")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for where, pod in _pod_specs():
        if where.startswith(("raycluster.yaml", "rayjob.yaml")):
            claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                      if "persistentVolumeClaim" in v]
            assert claims == ["dlor-scale-output"], where


# --------------------------------------------------------------------------- helpers shipped in deploy/
def _ensure_bucket_module():
    spec = importlib.util.spec_from_file_location("ensure_bucket",
                                                  DEPLOY / "mlflow" / "ensure_bucket.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _FakeS3:
    def __init__(self, buckets=(), fail=0, error_code=None):
        self.buckets, self.fail, self.error_code, self.created = set(buckets), fail, error_code, []

    def list_buckets(self):
        if self.fail:
            self.fail -= 1
            err = ConnectionError("minio starting")
            if self.error_code:
                err.response = {"Error": {"Code": self.error_code}}
            raise err
        return {"Buckets": [{"Name": b} for b in self.buckets]}

    def create_bucket(self, Bucket):
        self.created.append(Bucket)
        self.buckets.add(Bucket)


def test_ensure_bucket_helper():
    mod = _ensure_bucket_module()
    assert mod.bucket_of("s3://mlflow-artifacts/x/y") == "mlflow-artifacts"
    with pytest.raises(ValueError):
        mod.bucket_of("/local/path")
    assert mod.ensure_bucket(_FakeS3(["b"]), "b") == "exists"
    fake = _FakeS3(fail=2)
    assert mod.ensure_bucket(fake, "b", sleep=0) == "created" and fake.created == ["b"]
    with pytest.raises(ConnectionError):
        mod.ensure_bucket(_FakeS3(fail=1, error_code="InvalidAccessKeyId"), "b", sleep=0)
    with pytest.raises(ConnectionError):
        mod.ensure_bucket(_FakeS3(fail=100), "b", timeout=0.05, sleep=0.01)


def test_readme_covers_both_paths_and_references_real_files():
    text = (DEPLOY / "README.md").read_text()
    for needle in ("ray up deploy/ray-cluster.yaml", "kubectl apply", "kubectl -n dlor-scale create secret",
                   "dlor-scale status", "--resume", "port-forward", "127.0.0.1", "docker compose",
                   "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_USERNAME", "DLOR_OPTUNA_STORAGE"):
        assert needle in text, needle
    generated = {"deploy/.env"}  # created by the user from deploy/.env.example
    for ref in set(re.findall(r"\bdeploy/[\w./-]+\w", text)) - generated:
        assert (ROOT / ref).exists(), f"README references missing {ref}"


def test_env_names_are_the_ones_the_software_reads():
    """The manifests set names nobody reads if the package (or MLflow) renames one."""
    import mlflow.environment_variables as mlflow_env

    sources = "\n".join(p.read_text() for p in (ROOT / "dlor_scale").rglob("*.py")
                        if "testing" not in p.relative_to(ROOT / "dlor_scale").parts)
    for name in ("MLFLOW_TRACKING_URI", "DLOR_OPTUNA_STORAGE", "DLOR_OUTPUT_DIR", "RAY_ADDRESS"):
        assert f'"{name}"' in sources, f"dlor_scale no longer reads {name}"
    # credentials are read by the MLflow client itself
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert any(getattr(v, "name", None) == name for v in vars(mlflow_env).values()), name
