"""A throw-away multi-node "cluster" on one machine: Ray head + workers, MLflow, PostgreSQL DBs.

Why this exists
---------------
Unit tests with ``ray.init()`` in-process exercise a single node, SQLite and no auth. The
failure modes that matter for dlor-scale in production (trials placed on another node, a node
dying under a running study, the MLflow server restarting, basic-auth rejecting a client, token
auth on every Ray process) only show up with *separate* processes talking over sockets. This
module starts exactly that, locally, and guarantees it can be torn down again on a machine that
is shared with other people's Ray clusters:

* Every node is ``ray start ... --block`` run as **our own child** in its own session/process
  group (``start_new_session=True``). ``ray start`` without ``--block`` daemonizes (processes are
  reparented to PID 1) and ``ray stop`` kills *every* Ray process of *every* user on the box, so
  neither is used. Stopping = SIGTERM to the process group, SIGKILL after a timeout.
* Every process we start carries a unique ``DLOR_HARNESS_ID`` marker in its environment; Ray
  passes its environment down to gcs_server/raylet/agents/workers. After the process groups are
  killed, a sweep over ``/proc/*/environ`` SIGKILLs any straggler that still carries *our*
  marker (e.g. a ``ray::DashboardAgent`` that re-parented itself). Nothing is matched by name.
* Ports are picked dynamically (GCS, client server, dashboard agent, MLflow) and the Ray temp
  dir is private, so two harnesses - or a harness and a colleague's cluster - do not collide.
* Ray >= 2.59 turns on token auth for new clusters and would otherwise write/read the
  machine-wide ``~/.ray/auth_token``. We always run ``RAY_AUTH_MODE=token`` with our own
  ``RAY_AUTH_TOKEN`` on head, workers and (via :attr:`LocalCluster.env`) drivers, which mirrors
  the production deployment (see ``deploy/``) and never touches the shared file.
* PostgreSQL databases get unique names and are dropped ``WITH (FORCE)`` on exit, so the shared
  server does not accumulate state between runs.

Usage::

    with LocalCluster(tmp_path, workers=1) as cluster:
        subprocess.run([sys.executable, "driver.py"], env={**os.environ, **cluster.env})
        cluster.kill_worker(1)          # SIGKILL node 1's process group
        cluster.wait_for_nodes([0])     # block until the GCS has marked it dead
        cluster.restart_mlflow()        # same port, same PostgreSQL DB

Node ``i`` (0 = head) advertises the custom resource ``{"node_<i>": 1}`` so tests can pin work
to a specific node with ``.options(resources={"node_1": 0.01})``.

Developer entry point: ``python -m dlor_scale.testing.harness --workers 1`` prints the env to export and
keeps everything running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

__all__ = ["LocalCluster", "HarnessError", "postgres_available", "free_port"]

#: Env var placed on every process the harness starts; used only for the leftover sweep.
MARKER_ENV = "DLOR_HARNESS_ID"

#: Health-check settings for the head's GCS. With Ray's defaults a SIGKILLed node is declared
#: dead only after several multi-second health-check periods; tests want ~3 s (measured 3.1-3.8
#: s with these). A killed raylet refuses connections at once, so a short period/threshold does
#: not produce false positives, even on a loaded 2-core box.
FAST_NODE_DEATH_ENV = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}

# Unix socket paths (``<temp>/session_<date>_<pid>/sockets/plasma_store``) must fit in 107
# bytes; pytest's tmp_path is often too deep, so long temp dirs are replaced by a short one.
_MAX_RAY_TEMP_DIR_LEN = 48

# Driver-side probe, run in a *subprocess* so the calling process never imports/initialises
# Ray with our token (Ray caches the auth token process-wide in C++).
_NODES_PROBE = r"""
import json, os, sys, time
import ray
_w = json.loads(sys.argv[1])
want = set(_w) if _w is not None else None
timeout = float(sys.argv[2])
ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + timeout
while True:
    nodes = ray.nodes()
    alive = {k for n in nodes if n["Alive"] for k in n["Resources"] if k.startswith("node_")}
    if want is None or alive == want or time.monotonic() > deadline:
        break
    time.sleep(0.25)
print("@@NODES@@" + json.dumps([
    {"node_id": n["NodeID"], "alive": bool(n["Alive"]), "resources": n["Resources"],
     "address": n.get("NodeManagerAddress")} for n in nodes]))
ray.shutdown()
"""


class HarnessError(RuntimeError):
    """A harness component failed to start or to report healthy in time."""


def free_port() -> int:
    """Return a TCP port that is free on all interfaces right now.

    There is an unavoidable race between closing this probe socket and the server binding it;
    on a shared box it is small, and start-up failures surface as :class:`HarnessError` with
    the component's log tail.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def _libpq_url(url: str, dbname: str | None = None) -> str:
    """``postgresql[+driver]://user@host:port[/db]`` -> libpq URI, optionally with another DB."""
    parts = urllib.parse.urlsplit(url)
    scheme = "postgresql"
    path = f"/{dbname}" if dbname is not None else parts.path
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _sqlalchemy_url(url: str, dbname: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(("postgresql+psycopg2", parts.netloc, f"/{dbname}", "", ""))


def postgres_available(postgres_url: str = "postgresql://postgres@127.0.0.1:5432") -> tuple[bool, str]:
    """Return ``(ok, reason)``: can we connect and create databases on this server?

    Tests call this to ``pytest.skip`` with a precise reason instead of failing in set-up.
    """
    try:
        import psycopg2
    except ImportError as e:  # pragma: no cover - psycopg2-binary is a hard dependency
        return False, f"psycopg2 not importable: {e}"
    try:
        conn = psycopg2.connect(_libpq_url(postgres_url, "postgres"), connect_timeout=3)
    except Exception as e:
        return False, f"PostgreSQL at {postgres_url} unreachable: {e}".strip()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
            row = cur.fetchone()
        if not row or not row[0]:
            return False, f"PostgreSQL user at {postgres_url} may not CREATE DATABASE"
    finally:
        conn.close()
    return True, ""


def _ray_client_installed() -> bool:
    """``ray[client]`` (grpcio) is optional; ``ray start`` refuses ``--ray-client-server-port``
    without it and then starts no client server at all (same check as Ray's own)."""
    return importlib.util.find_spec("grpc") is not None


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "<no log>"
    return "\n".join(lines[-n:])


def _descendants(root: int) -> list[int]:
    """PIDs of all live descendants of ``root`` (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    try:
        entries = [e for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return []
    for e in entries:
        try:
            with open(f"/proc/{e.name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(e.name))
    out, stack = [], [root]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class _Proc:
    """A child process in its own session, with its log file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path, cwd: Path):
        self.name = name
        self.cmd = cmd
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._logf = open(log, "ab")
        # start_new_session: own process group, so killpg reaches every child Ray/uvicorn
        # spawns and nothing of the caller's group (pytest) is ever signalled.
        self.popen = subprocess.Popen(
            cmd, env=env, cwd=str(cwd), stdout=self._logf, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.pgid = self.popen.pid  # session leader => pgid == pid

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def terminate(self) -> None:
        """Send SIGTERM to the leader only (see :meth:`stop`)."""
        if self.popen.poll() is None:
            # Still un-reaped => the PID cannot have been recycled; safe to signal by PID.
            self.popen.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        """Wait until the whole group is gone; SIGKILL the group at ``deadline``."""
        while time.monotonic() < deadline:
            self.popen.poll()
            if not self.group_alive():
                break
            time.sleep(0.1)
        else:
            self.signal_group(signal.SIGKILL)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass
        self._logf.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the leader, then SIGKILL the whole group if anything is left after
        ``timeout`` seconds.

        Only the *leader* (``ray start --block`` / ``mlflow server``) gets the SIGTERM: it
        shuts its children down in order (~2 s for a Ray node). SIGTERM to the whole group at
        once makes the raylet start a slow graceful drain while the GCS and monitor keep
        waiting for it (measured: >10 s, ending in SIGKILL anyway).
        """
        self.terminate()
        self.wait_or_kill(time.monotonic() + timeout)

    def kill(self) -> None:
        """SIGKILL the group *and* every descendant. Ray's raylet starts its worker processes
        in their own sessions, so the process group alone would leave them running until they
        notice the dead raylet; a vanished machine takes everything with it at once."""
        procs = _descendants(self.pid) if self.popen.poll() is None else []
        self.signal_group(signal.SIGKILL)
        for pid in procs:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass


class LocalCluster:
    """Ray head + N worker nodes + MLflow server on fresh PostgreSQL databases, all local.

    Parameters
    ----------
    workdir:
        Directory for logs (``logs/``), MLflow artifacts, the output dir and (if the path is
        short enough) the Ray temp dir. Created if missing; left in place for post-mortems.
    workers:
        Number of worker nodes besides the head. Node ``i`` gets resource ``node_<i>``.
    cpus_per_node:
        Logical CPUs each node advertises (``--num-cpus``). Logical only: on a 2-core box
        two 1-CPU nodes are the honest maximum.
    postgres_url:
        Server URL *without* database. Databases are created here and dropped on exit.
    mlflow:
        Start an ``mlflow server``. Its backend store is a fresh PostgreSQL database.
    mlflow_auth:
        Run MLflow with ``--app-name basic-auth`` (admin password + Flask secret generated, auth
        user store in its own PostgreSQL database); :attr:`env` then carries the credentials.
    token:
        Ray auth token; generated with :func:`secrets.token_hex` if not given.
    ray:
        Set to False for MLflow/PostgreSQL-only tests (saves ~10 s of Ray start-up);
        ``workers`` is then ignored.
    object_store_memory:
        Bytes of plasma per node. Ray's default (30 % of RAM per node) is pointless here.
    start_timeout:
        Seconds to wait for each component to become healthy.
    fast_node_death:
        Shorten the GCS health checks (see :data:`FAST_NODE_DEATH_ENV`) so a killed worker is
        reported dead within a few seconds.
    extra_env:
        Extra environment for every node and the MLflow server (e.g. ``TUNE_*`` knobs).

    Attributes (valid after ``__enter__``)
    --------------------------------------
    address:      ``"127.0.0.1:<gcs port>"`` (``None`` if ``ray=False``)
    env:          env vars a driver subprocess needs (see :meth:`_build_env`)
    mlflow_uri:   ``http://127.0.0.1:<port>`` (``None`` if ``mlflow=False``)
    optuna_url:   ``postgresql+psycopg2://.../<fresh db>`` for Optuna ``RDBStorage``
    mlflow_db_url: SQLAlchemy URL of MLflow's backend database
    output_dir:   ``workdir/output`` (exported as ``DLOR_OUTPUT_DIR``)
    nodes:        ``subprocess.Popen`` per node, index = node number (0 = head)
    token:        the Ray auth token
    mlflow_username / mlflow_password: admin credentials when ``mlflow_auth``
    log_dir:      ``workdir/logs`` (``ray-head.log``, ``ray-worker-<i>.log``, ``mlflow.log``)

    Methods
    -------
    kill_worker(i) / start_worker(i):   SIGKILL node i's processes / bring a replacement up
    wait_for_nodes([0, ...]), node_info(), alive_nodes():  what the GCS reports
    stop_mlflow() / start_mlflow() / restart_mlflow() / kill_mlflow(), mlflow_healthy()
    leftover_pids():  processes still carrying this harness' marker ([] after stop)
    start() / stop():  the same as ``__enter__`` / ``__exit__``
    """

    def __init__(
        self,
        workdir: Path | str,
        *,
        workers: int = 1,
        cpus_per_node: int = 1,
        postgres_url: str = "postgresql://postgres@127.0.0.1:5432",
        mlflow: bool = True,
        mlflow_auth: bool = False,
        token: str | None = None,
        ray: bool = True,
        object_store_memory: int = 128 * 1024**2,
        start_timeout: float = 120.0,
        fast_node_death: bool = True,
        extra_env: dict[str, str] | None = None,
    ):
        if workers < 0:
            raise ValueError("workers must be >= 0")
        if not ray:
            workers = 0  # MLflow/PostgreSQL-only harness; the default workers=1 is moot
        self.workdir = Path(workdir).resolve()
        self.workers = workers
        self.cpus_per_node = cpus_per_node
        self.postgres_url = postgres_url
        self.use_mlflow = mlflow
        self.mlflow_auth = mlflow_auth
        self.use_ray = ray
        self.token = token or secrets.token_hex(32)
        self.object_store_memory = object_store_memory
        self.start_timeout = start_timeout
        self.fast_node_death = fast_node_death
        self.extra_env = dict(extra_env or {})

        self.harness_id = uuid.uuid4().hex
        self._dbprefix = f"dlorh_{self.harness_id[:12]}"
        self.mlflow_db = f"{self._dbprefix}_mlflow"
        self.optuna_db = f"{self._dbprefix}_optuna"
        self.auth_db = f"{self._dbprefix}_mlflowauth"
        self._created_dbs: list[str] = []

        self.address: str | None = None
        self.gcs_port: int | None = None
        self.mlflow_port: int | None = None
        self.mlflow_uri: str | None = None
        self.mlflow_db_url = _sqlalchemy_url(postgres_url, self.mlflow_db)
        self.optuna_url = _sqlalchemy_url(postgres_url, self.optuna_db)
        self.mlflow_username: str | None = "admin" if mlflow_auth else None
        self.mlflow_password: str | None = secrets.token_urlsafe(24) if mlflow_auth else None
        self._flask_secret = secrets.token_hex(32)
        self.output_dir = self.workdir / "output"
        self.log_dir = self.workdir / "logs"
        self.env: dict[str, str] = {}

        self._node_procs: list[_Proc | None] = []
        self._mlflow_proc: _Proc | None = None
        self._own_tmp: Path | None = None
        self.ray_temp_dir: Path | None = None
        self._started = False

    # ------------------------------------------------------------------ properties
    @property
    def nodes(self) -> list[subprocess.Popen]:
        """``Popen`` of each node's ``ray start --block`` (index 0 = head)."""
        return [p.popen for p in self._node_procs if p is not None]

    @property
    def mlflow_process(self) -> subprocess.Popen | None:
        return self._mlflow_proc.popen if self._mlflow_proc else None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "LocalCluster":
        """Start everything; on any failure, tear down what was started and re-raise."""
        if self._started:
            raise HarnessError("LocalCluster already started")
        self._started = True
        if self.mlflow_auth and importlib.util.find_spec("flask_wtf") is None:
            # Otherwise the server dies after ~10 s with an ImportError buried in its log.
            raise HarnessError("mlflow_auth=True needs Flask-WTF: depend on mlflow[auth]")
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._create_databases()
            if self.use_mlflow:
                self.mlflow_port = free_port()
                self.mlflow_uri = f"http://127.0.0.1:{self.mlflow_port}"
                # Launch MLflow first: its ~10 s import/startup overlaps with Ray's.
                self._spawn_mlflow()
            if self.use_ray:
                self._start_ray()
            self.env = self._build_env()
            if self.use_mlflow:
                self._wait_mlflow_healthy()
            if self.use_ray:
                self.wait_for_nodes(list(range(self.workers + 1)))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop MLflow, workers, head (SIGTERM -> SIGKILL), sweep leftovers, drop the DBs."""
        # MLflow and all workers in parallel, then the head: a raylet whose GCS vanished first
        # would spend its shutdown trying to reconnect.
        first = [p for p in [self._mlflow_proc, *self._node_procs[1:]] if p is not None]
        for proc in first:
            proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in first:
            proc.wait_or_kill(deadline)
        self._mlflow_proc = None
        if self._node_procs and self._node_procs[0] is not None:
            self._node_procs[0].stop(timeout)
        self._sweep_leftovers()
        self._drop_databases()
        if self._own_tmp is not None:
            shutil.rmtree(self._own_tmp, ignore_errors=True)
            self._own_tmp = None

    # ------------------------------------------------------------------ env for drivers
    def _build_env(self) -> dict[str, str]:
        """Env a driver/subprocess needs to join this cluster and log to its MLflow.

        The names are the ones the dlor-scale package and the deployment manifests use, so a
        driver started with ``{**os.environ, **cluster.env}`` behaves as it would on a real
        cluster.
        """
        env = {
            "DLOR_OPTUNA_STORAGE": self.optuna_url,
            "DLOR_OUTPUT_DIR": str(self.output_dir),
        }
        if self.use_ray:
            env.update({
                "RAY_ADDRESS": self.address or "",
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": self.token,
            })
        if self.use_mlflow:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_uri or ""
            if self.mlflow_auth:
                env["MLFLOW_TRACKING_USERNAME"] = self.mlflow_username or ""
                env["MLFLOW_TRACKING_PASSWORD"] = self.mlflow_password or ""
        return env

    def _base_env(self) -> dict[str, str]:
        """Environment for processes we spawn: the caller's, minus anything that would make
        them join/serve something else (RAY_*, MLFLOW_*, DLOR_*), plus our marker."""
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("RAY_", "MLFLOW_", "DLOR_"))
        }
        env.update(self.extra_env)
        env[MARKER_ENV] = self.harness_id
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # Make sure the venv's console scripts are found by Ray's own subprocesses.
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        return env

    # ------------------------------------------------------------------ PostgreSQL
    def _pg_admin(self):
        import psycopg2

        conn = psycopg2.connect(_libpq_url(self.postgres_url, "postgres"), connect_timeout=5)
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
        return conn

    def _create_databases(self) -> None:
        dbs = [self.optuna_db]
        if self.use_mlflow:
            dbs.append(self.mlflow_db)
            if self.mlflow_auth:
                dbs.append(self.auth_db)
        conn = self._pg_admin()
        try:
            with conn.cursor() as cur:
                for db in dbs:
                    cur.execute(f'CREATE DATABASE "{db}"')
                    self._created_dbs.append(db)
        finally:
            conn.close()

    def _drop_databases(self) -> None:
        if not self._created_dbs:
            return
        try:
            conn = self._pg_admin()
        except Exception:
            return
        try:
            with conn.cursor() as cur:
                for db in list(self._created_dbs):
                    # FORCE (PG >= 13) terminates lingering connections, e.g. a pool in a
                    # crashed driver; otherwise the DROP would fail and the DB would leak.
                    cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                    self._created_dbs.remove(db)
        finally:
            conn.close()

    # ------------------------------------------------------------------ Ray
    def _ray_bin(self) -> str:
        cand = Path(sys.executable).parent / "ray"
        return str(cand) if cand.exists() else (shutil.which("ray") or "ray")

    def _node_env(self, head: bool) -> dict[str, str]:
        env = self._base_env()
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = self.token
        if head and self.fast_node_death:
            env.update(FAST_NODE_DEATH_ENV)
        return env

    def _start_ray(self) -> None:
        temp = self.workdir / "ray"
        if len(str(temp)) > _MAX_RAY_TEMP_DIR_LEN:
            self._own_tmp = Path(tempfile.mkdtemp(prefix="dlorh-"))
            temp = self._own_tmp
        temp.mkdir(parents=True, exist_ok=True)
        self.ray_temp_dir = temp
        self.gcs_port = free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        head_cmd = [
            self._ray_bin(), "start", "--head", "--block",
            "--port", str(self.gcs_port),
            "--node-ip-address", "127.0.0.1",
            "--temp-dir", str(temp),
            "--num-cpus", str(self.cpus_per_node),
            "--num-gpus", "0",
            "--resources", json.dumps({"node_0": 1}),
            "--include-dashboard=false",
            "--dashboard-agent-listen-port", str(free_port()),
            "--object-store-memory", str(self.object_store_memory),
            "--disable-usage-stats",
        ]
        if _ray_client_installed():
            # Default 10001 is likely taken by a colleague's head node on a shared box.
            head_cmd += ["--ray-client-server-port", str(free_port())]
        head = _Proc("head", head_cmd, self._node_env(head=True), self.log_dir / "ray-head.log",
                     self.workdir)
        self._node_procs.append(head)
        self._wait_port(self.gcs_port, head)
        for i in range(1, self.workers + 1):
            self._node_procs.append(self._spawn_worker(i))

    def _worker_cmd(self, i: int) -> list[str]:
        return [
            self._ray_bin(), "start", "--block",
            "--address", self.address or "",
            "--node-ip-address", "127.0.0.1",
            "--num-cpus", str(self.cpus_per_node),
            "--num-gpus", "0",
            "--resources", json.dumps({f"node_{i}": 1}),
            "--dashboard-agent-listen-port", str(free_port()),
            "--object-store-memory", str(self.object_store_memory),
            "--disable-usage-stats",
        ]

    def _spawn_worker(self, i: int) -> _Proc:
        return _Proc(f"worker-{i}", self._worker_cmd(i), self._node_env(head=False),
                     self.log_dir / f"ray-worker-{i}.log", self.workdir)

    def _wait_port(self, port: int, proc: _Proc) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise HarnessError(
                    f"{proc.name} exited with {proc.popen.returncode} before port {port} opened:\n"
                    f"{_tail(proc.log)}")
            if _port_open(port):
                return
            time.sleep(0.2)
        raise HarnessError(f"{proc.name}: port {port} not open after {self.start_timeout}s:\n"
                           f"{_tail(proc.log)}")

    def node_info(self, expect: list[int] | None = None, timeout: float = 0.0) -> list[dict]:
        """Ask the GCS (through a short-lived driver subprocess) for all nodes it knows.

        With ``expect`` (node numbers), poll up to ``timeout`` seconds until exactly those
        nodes are alive. Returns ``[{"node_id", "alive", "resources", "address"}]``.
        """
        if not self.use_ray:
            raise HarnessError("cluster started with ray=False")
        want = json.dumps(sorted(f"node_{i}" for i in expect) if expect is not None else None)
        env = {**self._base_env(), **self.env}
        env.pop(MARKER_ENV, None)  # a probe is not part of the cluster
        res = subprocess.run(
            [sys.executable, "-c", _NODES_PROBE, want, str(timeout)],
            env=env, capture_output=True, text=True, timeout=timeout + 90,
        )
        for line in res.stdout.splitlines():
            if line.startswith("@@NODES@@"):
                return json.loads(line[len("@@NODES@@"):])
        raise HarnessError(f"node probe failed (rc={res.returncode}):\n{res.stderr[-3000:]}")

    def alive_nodes(self, info: list[dict] | None = None) -> list[int]:
        """Sorted node numbers (from the ``node_<i>`` resource) the GCS reports alive."""
        info = self.node_info() if info is None else info
        out = []
        for n in info:
            if n["alive"]:
                out += [int(k[5:]) for k in n["resources"] if k.startswith("node_")]
        return sorted(out)

    def wait_for_nodes(self, expect: list[int], timeout: float | None = None) -> list[dict]:
        """Block until exactly the nodes numbered ``expect`` are alive; raise otherwise."""
        timeout = self.start_timeout if timeout is None else timeout
        for i, proc in enumerate(self._node_procs):
            if i in expect and proc is not None and not proc.alive():
                raise HarnessError(f"{proc.name} exited with {proc.popen.returncode}:\n"
                                   f"{_tail(proc.log)}")
        info = self.node_info(expect, timeout)
        alive = self.alive_nodes(info)
        if alive != sorted(expect):
            logs = "\n".join(f"--- {p.name}\n{_tail(p.log, 15)}" for p in self._node_procs if p)
            raise HarnessError(f"expected alive nodes {sorted(expect)}, GCS reports {alive}\n{logs}")
        return info

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker node ``i``'s whole process group (raylet, agents, its workers).

        Simulates a machine/pod vanishing: nothing gets a chance to clean up. The GCS notices
        via failed health checks (a few seconds with ``fast_node_death``).
        """
        if not 1 <= i <= self.workers:
            raise ValueError(f"worker index must be in 1..{self.workers} (0 is the head)")
        proc = self._node_procs[i]
        if proc is None:
            return
        proc.kill()
        proc._logf.close()

    def start_worker(self, i: int, wait: bool = True) -> None:
        """(Re)start worker node ``i`` after :meth:`kill_worker` - a replacement machine."""
        if not 1 <= i <= self.workers:
            raise ValueError(f"worker index must be in 1..{self.workers} (0 is the head)")
        old = self._node_procs[i]
        if old is not None and old.alive():
            raise HarnessError(f"worker {i} is still running")
        self._node_procs[i] = self._spawn_worker(i)
        if wait:
            deadline = time.monotonic() + self.start_timeout
            while True:
                alive = self.alive_nodes(self.node_info())
                if i in alive:
                    return
                if time.monotonic() > deadline:
                    raise HarnessError(f"worker {i} did not rejoin:\n"
                                       f"{_tail(self._node_procs[i].log)}")
                time.sleep(0.5)

    # ------------------------------------------------------------------ MLflow
    def _mlflow_bin(self) -> str:
        cand = Path(sys.executable).parent / "mlflow"
        return str(cand) if cand.exists() else (shutil.which("mlflow") or "mlflow")

    def _write_auth_ini(self) -> Path:
        """Auth config: same keys as ``deploy/mlflow/basic_auth.ini`` but a private user DB.

        The admin password is *not* written here; it reaches the server only through
        ``MLFLOW_AUTH_ADMIN_PASSWORD``, exactly as in the deployment.
        """
        ini = self.workdir / "mlflow" / "basic_auth.ini"
        ini.parent.mkdir(parents=True, exist_ok=True)
        ini.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {_sqlalchemy_url(self.postgres_url, self.auth_db)}\n"
            f"admin_username = {self.mlflow_username}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        return ini

    def _spawn_mlflow(self) -> None:
        mdir = self.workdir / "mlflow"
        mdir.mkdir(parents=True, exist_ok=True)
        art = self.workdir / "mlartifacts"
        art.mkdir(parents=True, exist_ok=True)
        cmd = [
            self._mlflow_bin(), "server",
            "--host", "127.0.0.1", "--port", str(self.mlflow_port),
            "--workers", "1",
            "--backend-store-uri", self.mlflow_db_url,
            "--artifacts-destination", art.as_uri(),
        ]
        env = self._base_env()
        # The job runner + 7 huey consumers cost ~1.7 GB and are unused by dlor-scale.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        if self.mlflow_auth:
            cmd += ["--app-name", "basic-auth"]
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(self._write_auth_ini())
            env["MLFLOW_AUTH_ADMIN_PASSWORD"] = self.mlflow_password or ""
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = self._flask_secret
        self._mlflow_proc = _Proc("mlflow", cmd, env, self.log_dir / "mlflow.log", mdir)

    def _wait_mlflow_healthy(self) -> None:
        proc = self._mlflow_proc
        assert proc is not None
        deadline = time.monotonic() + self.start_timeout
        url = f"{self.mlflow_uri}/health"
        while time.monotonic() < deadline:
            if not proc.alive():
                raise HarnessError(f"mlflow server exited with {proc.popen.returncode}:\n"
                                   f"{_tail(proc.log)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.3)
        raise HarnessError(f"mlflow not healthy after {self.start_timeout}s:\n{_tail(proc.log)}")

    def mlflow_healthy(self) -> bool:
        if not self.mlflow_uri:
            return False
        try:
            with urllib.request.urlopen(f"{self.mlflow_uri}/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop_mlflow(self, timeout: float = 10.0) -> None:
        """Stop the MLflow server (SIGTERM, then SIGKILL). Its database is kept."""
        if self._mlflow_proc is not None:
            self._mlflow_proc.stop(timeout)
            self._mlflow_proc = None

    def kill_mlflow(self) -> None:
        """SIGKILL the MLflow server's process group (crash, not shutdown)."""
        if self._mlflow_proc is not None:
            self._mlflow_proc.kill()
            self._mlflow_proc._logf.close()
            self._mlflow_proc = None

    def start_mlflow(self) -> None:
        """Start the server again on the *same* port and database, so clients holding
        ``mlflow_uri`` reconnect transparently. Blocks until ``/health`` answers."""
        if not self.use_mlflow:
            raise HarnessError("cluster started with mlflow=False")
        if self._mlflow_proc is not None and self._mlflow_proc.alive():
            raise HarnessError("mlflow server already running")
        deadline = time.monotonic() + 30
        while _port_open(self.mlflow_port or 0) and time.monotonic() < deadline:
            time.sleep(0.2)  # old uvicorn worker still draining
        self._spawn_mlflow()
        self._wait_mlflow_healthy()

    def restart_mlflow(self) -> None:
        self.stop_mlflow()
        self.start_mlflow()

    # ------------------------------------------------------------------ leftovers
    def leftover_pids(self) -> list[int]:
        """PIDs of live processes carrying this harness' marker (should be [] after stop)."""
        needle = f"{MARKER_ENV}={self.harness_id}".encode()
        me = os.getpid()
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    data = f.read()
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if state != b"Z" and needle in data.split(b"\0"):
                found.append(int(entry.name))
        return found

    def _sweep_leftovers(self) -> None:
        if not os.path.isdir("/proc"):
            return
        for _ in range(20):
            pids = self.leftover_pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.1)


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run a local dlor-scale test cluster until Ctrl-C.")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--cpus-per-node", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432")
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--mlflow-auth", action="store_true")
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dlor-cluster-"))
    cluster = LocalCluster(workdir, workers=args.workers, cpus_per_node=args.cpus_per_node,
                           postgres_url=args.postgres_url, mlflow=not args.no_mlflow,
                           mlflow_auth=args.mlflow_auth)
    stop = False

    def _on_signal(*_: Any) -> None:
        nonlocal stop
        stop = True

    # Explicit handlers: a background job of a non-interactive shell inherits SIGINT=ignored,
    # so relying on KeyboardInterrupt would leave the cluster running.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with cluster:
        print(f"# workdir: {workdir}  (logs in {cluster.log_dir})")
        print("# export these in the shell that runs your driver:")
        for k, v in cluster.env.items():
            print(f"export {k}={shlex.quote(v)}")
        sys.stdout.flush()
        while not stop:
            time.sleep(0.5)
        print("# stopping ...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
