"""LocalCluster: a real multi-process Ray cluster + MLflow on PostgreSQL, started and torn down.

These tests are the ground truth for everything the deployment manifests promise (token auth on
every Ray process, MLflow basic-auth with READ default, PostgreSQL backend) and for the harness
that other cluster/chaos tests build on. They therefore drive the cluster the way production
does: the driver is a *separate process* that only gets ``cluster.env``, never the test
process' own Ray state.

Budget: ~2 min on the shared 2-core box (Ray ~5-10 s per node, MLflow ~10-25 s per start).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dlor_scale.testing.harness import LocalCluster, _libpq_url, _sqlalchemy_url, postgres_available

PG_URL = os.environ.get("DLOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")

_pg_ok, _pg_reason = postgres_available(PG_URL)
needs_pg = pytest.mark.skipif(not _pg_ok, reason=f"PostgreSQL needed: {_pg_reason}")


# Driver run as a subprocess with cluster.env only: pins one task to each node's custom
# resource and reports which node ran it.
PLACEMENT_DRIVER = textwrap.dedent(
    """
    import json, os, sys, ray
    n = int(sys.argv[1])
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level="ERROR")

    @ray.remote(num_cpus=1)
    def where(tag):
        import os, ray
        return {"tag": tag, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    refs = [where.options(resources={f"node_{i}": 0.01}).remote(i) for i in range(n)]
    out = ray.get(refs, timeout=120)
    print("@@RESULT@@" + json.dumps(out))
    """
)

UNAUTH_DRIVER = textwrap.dedent(
    """
    import os, ray
    try:
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level="ERROR")
    except Exception as e:
        print("@@REJECTED@@", type(e).__name__, str(e)[:300])
        raise SystemExit(3)
    print("@@ACCEPTED@@")
    """
)


def _watch_unauth_driver(env: dict[str, str], log: Path, timeout: float = 60) -> str:
    """Start UNAUTH_DRIVER; return "rejected" as soon as the GCS answers InvalidAuthToken.

    ``ray.init`` retries the handshake ~20x at 1 s before giving up; the first rejection line
    is proof enough, so the driver (its own process group) is killed then.
    """
    import signal

    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    full_env.update(env)
    with open(log, "wb") as f:
        p = subprocess.Popen([sys.executable, "-c", UNAUTH_DRIVER], env=full_env, stdout=f,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "@@ACCEPTED@@" in text:
                return "accepted"
            if "InvalidAuthToken" in text or "@@REJECTED@@" in text:
                return "rejected"
            if p.poll() is not None:
                return f"exited rc={p.returncode}: {text[-1500:]}"
            time.sleep(0.2)
        return "timeout: " + log.read_text(errors="replace")[-1500:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _run_driver(code: str, env: dict[str, str], *args: str, timeout: float = 150):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code, *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def _result(proc: subprocess.CompletedProcess, tag: str = "@@RESULT@@"):
    for line in proc.stdout.splitlines():
        if line.startswith(tag):
            return json.loads(line[len(tag):])
    raise AssertionError(f"driver failed rc={proc.returncode}\nstdout={proc.stdout[-2000:]}\n"
                         f"stderr={proc.stderr[-4000:]}")


def _pg_query(db_url: str, sql: str, params=()):
    import psycopg2

    conn = psycopg2.connect(_libpq_url(db_url), connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def _databases_with_prefix(prefix: str) -> list[str]:
    rows = _pg_query(_libpq_url(PG_URL, "postgres"),
                     "SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",))
    return [r[0] for r in rows]


def _http(method: str, url: str, body: dict | None = None, auth: tuple[str, str] | None = None):
    """Tiny REST client returning (status, json-or-text) without raising on 4xx."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    if auth:
        req.add_header("Authorization",
                       "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read().decode()
            return r.status, (json.loads(raw) if raw.strip().startswith("{") else raw)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


# --------------------------------------------------------------------------- fast unit tests
def test_url_helpers():
    assert _libpq_url("postgresql+psycopg2://u:p@h:5/x", "y") == "postgresql://u:p@h:5/y"
    assert _sqlalchemy_url("postgresql://postgres@127.0.0.1:5432", "d") == \
        "postgresql+psycopg2://postgres@127.0.0.1:5432/d"


def test_postgres_available_reports_unreachable_server():
    ok, reason = postgres_available("postgresql://postgres@127.0.0.1:1")
    assert not ok and "unreachable" in reason


def test_constructor_validation(tmp_path):
    with pytest.raises(ValueError):
        LocalCluster(tmp_path, workers=-1)
    assert LocalCluster(tmp_path, ray=False).workers == 0


# --------------------------------------------------------------------------- real cluster
@pytest.mark.cluster
@needs_pg
def test_two_node_cluster_placement_mlflow_chaos_and_cleanup(tmp_path):
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    cluster = LocalCluster(tmp_path / "c", workers=1, cpus_per_node=1, postgres_url=PG_URL)
    with cluster:
        timings["start"] = time.monotonic() - t0
        prefix = cluster._dbprefix
        assert sorted(_databases_with_prefix(prefix)) == sorted(
            [cluster.mlflow_db, cluster.optuna_db])

        # -- env contract with the package / manifests
        env = cluster.env
        assert env["RAY_ADDRESS"] == cluster.address and cluster.address.startswith("127.0.0.1:")
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == cluster.token
        assert env["MLFLOW_TRACKING_URI"] == cluster.mlflow_uri
        assert env["DLOR_OPTUNA_STORAGE"].startswith("postgresql+psycopg2://")
        assert Path(env["DLOR_OUTPUT_DIR"]).is_dir()
        assert "MLFLOW_TRACKING_PASSWORD" not in env  # no auth in this cluster
        assert len(cluster.nodes) == 2 and all(p.poll() is None for p in cluster.nodes)

        # -- a driver in another process, with only cluster.env, reaches both nodes
        t = time.monotonic()
        res = _result(_run_driver(PLACEMENT_DRIVER, env, "2"))
        timings["placement"] = time.monotonic() - t
        info = cluster.node_info()
        id_of = {int(k[5:]): n["node_id"] for n in info if n["alive"]
                 for k in n["resources"] if k.startswith("node_")}
        assert [r["tag"] for r in res] == [0, 1]
        assert [r["node_id"] for r in res] == [id_of[0], id_of[1]]
        assert res[0]["node_id"] != res[1]["node_id"]

        # -- token auth is really enforced: a driver with a wrong token is turned away
        t = time.monotonic()
        verdict = _watch_unauth_driver({"RAY_ADDRESS": cluster.address, "RAY_AUTH_MODE": "token",
                                        "RAY_AUTH_TOKEN": "0" * 64}, tmp_path / "unauth.log")
        timings["unauth_driver"] = time.monotonic() - t
        assert verdict == "rejected"

        # -- MLflow on PostgreSQL accepts a run
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=cluster.mlflow_uri)
        exp = client.create_experiment("harness-smoke")
        run = client.create_run(exp, tags={"kind": "smoke"})
        now = int(time.time() * 1000)
        client.log_batch(run.info.run_id,
                         metrics=[Metric("loss", 1.0 / (s + 1), now, s) for s in range(5)],
                         params=[Param("arch", "dlr")])
        client.set_terminated(run.info.run_id, "FINISHED")
        rows = _pg_query(cluster.mlflow_db_url,
                         "SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert rows == [("FINISHED",)], "run must be stored in the PostgreSQL backend"

        # -- restart_mlflow (= stop_mlflow + start_mlflow): a new server process on the same
        #    URI; data survives (it lives in PostgreSQL) and writes work again
        old_pid = cluster.mlflow_process.pid
        t = time.monotonic()
        cluster.restart_mlflow()
        timings["mlflow_restart"] = time.monotonic() - t
        assert cluster.mlflow_process.pid != old_pid
        assert cluster.mlflow_healthy()
        client = MlflowClient(tracking_uri=cluster.mlflow_uri)
        hist = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in hist] == list(range(5))
        run2 = client.create_run(exp)
        client.log_metric(run2.info.run_id, "loss", 0.5, step=0)
        assert len(client.search_runs([exp])) == 2

        # -- kill a worker: SIGKILL of its process group, the GCS marks it dead
        worker_popen = cluster.nodes[1]
        t = time.monotonic()
        cluster.kill_worker(1)
        assert worker_popen.poll() is not None
        cluster.wait_for_nodes([0], timeout=60)
        timings["node_death_noticed"] = time.monotonic() - t
        assert cluster.alive_nodes() == [0]

        # -- ... and a replacement node rejoins and takes work again
        t = time.monotonic()
        cluster.start_worker(1)
        timings["worker_rejoin"] = time.monotonic() - t
        res = _result(_run_driver(PLACEMENT_DRIVER, env, "2"))
        assert len({r["node_id"] for r in res}) == 2
        assert res[1]["node_id"] != id_of[1]  # a new node id: it is a new raylet

        harness_id_pids = cluster.leftover_pids()
        assert harness_id_pids, "marker sweep must see the running cluster processes"
        t = time.monotonic()

    timings["teardown"] = time.monotonic() - t
    timings["total"] = time.monotonic() - t0
    # -- everything we started is gone, and the databases are dropped
    assert cluster.leftover_pids() == []
    assert all(p.poll() is not None for p in cluster.nodes)
    assert _databases_with_prefix(prefix) == []
    print("timings:", {k: round(v, 1) for k, v in timings.items()})


@pytest.mark.cluster
@needs_pg
def test_mlflow_basic_auth(tmp_path, monkeypatch):
    """``--app-name basic-auth`` with READ default: anonymous writes fail with 401, the admin
    (password only via env) can write, and a fresh user can read but not write."""
    t0 = time.monotonic()
    with LocalCluster(tmp_path / "a", ray=False, mlflow_auth=True, postgres_url=PG_URL) as c:
        start_s = time.monotonic() - t0
        env = c.env
        assert env["MLFLOW_TRACKING_USERNAME"] == "admin"
        assert env["MLFLOW_TRACKING_PASSWORD"] == c.mlflow_password
        assert "RAY_ADDRESS" not in env
        ini = (tmp_path / "a" / "mlflow" / "basic_auth.ini").read_text()
        assert c.mlflow_password not in ini and "admin_password" not in ini
        assert "default_permission = READ" in ini

        api = f"{c.mlflow_uri}/api/2.0/mlflow"
        admin = (c.mlflow_username, c.mlflow_password)

        # anonymous: rejected for writes *and* reads
        st, _ = _http("POST", f"{api}/experiments/create", {"name": "anon"})
        assert st == 401
        st, _ = _http("GET", f"{api}/experiments/search?max_results=10")
        assert st == 401
        st, _ = _http("POST", f"{api}/experiments/create", {"name": "x"}, auth=("admin", "wrong"))
        assert st == 401

        # admin, through the real client with the env-var credentials
        from mlflow.tracking import MlflowClient

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", env["MLFLOW_TRACKING_USERNAME"])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", env["MLFLOW_TRACKING_PASSWORD"])
        client = MlflowClient(tracking_uri=c.mlflow_uri)
        exp = client.create_experiment("auth-smoke")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "loss", 0.25, step=1)
        client.set_terminated(run.info.run_id)
        assert client.get_run(run.info.run_id).data.metrics["loss"] == 0.25
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")

        # the admin user lives in PostgreSQL (auth DB), not in a sqlite file next to the server
        rows = _pg_query(_sqlalchemy_url(PG_URL, c.auth_db), "SELECT username FROM users")
        assert ("admin",) in rows
        assert not list((tmp_path / "a" / "mlflow").glob("*.db"))

        # default_permission=READ: a new user may read the admin's run but not write to it
        st, _ = _http("POST", f"{api}/users/create",
                      {"username": "alice", "password": "alice-password-123"}, auth=admin)
        assert st == 200
        alice = ("alice", "alice-password-123")
        st, body = _http("GET", f"{api}/runs/get?run_id={run.info.run_id}", auth=alice)
        assert st == 200, body
        st, _ = _http("POST", f"{api}/runs/log-metric",
                      {"run_id": run.info.run_id, "key": "loss", "value": 9.0,
                       "timestamp": 0, "step": 2}, auth=alice)
        assert st == 403

        # stop_mlflow: the server is really gone (health fails, no process left behind)
        c.stop_mlflow()
        assert not c.mlflow_healthy() and c.mlflow_process is None
        assert c.leftover_pids() == []  # ray=False: MLflow was the only thing running
    print(f"auth: start {start_s:.1f}s, total {time.monotonic() - t0:.1f}s")
    assert c.leftover_pids() == []
    assert _databases_with_prefix(c._dbprefix) == []
