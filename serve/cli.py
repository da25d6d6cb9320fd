"""``lipsync serve``: the HTTP API (and web page) on Ray Serve. Registered with ``lipsync`` through the
``lipsync.commands`` entry point ``serve = serve.cli:add_parsers`` (pyproject.toml). Imports no Ray
until it runs."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

DEFAULT_PORTS = {"api": 8000, "web": 7860}

# Ray Serve's controller gives a new HTTP proxy 5 s to answer its readiness check, then kills it as
# unhealthy and starts another (10 s, 15 s, ...). On a busy machine the proxy's worker process alone
# takes longer than that to start, so the proxy was killed before it ran and `serve.start` (waiting on
# it) died with ActorDiedError. The controller reads these at start; ours are generous, the user's own
# environment wins.
CONTROLLER_ENV = {
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
}


class StartupError(ValueError):
    """Start-up failed: one line for the user (lipsync.cli prints it, exit code 1)."""


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "serve", help="HTTP API and web page (Ray Serve)",
        description="Serve lip-sync over HTTP on Ray Serve: POST /generate (multipart video|image + audio|text, "
                    "answers the mp4), POST /jobs + GET /jobs/{id} for long inputs, GET /healthz, OpenAPI docs "
                    "at /docs; in web mode also a page at /. Runs on a local Ray instance started on demand, or "
                    "on a cluster with --address. `serve run lipsync/configs/serve.yaml` starts the same application.")
    p.add_argument("--mode", choices=["api", "web"], default=None,
                   help="api: the HTTP API only; web: the API plus the page at / (default: the config's, web)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default 7860 in web mode, 8000 in api mode)")
    p.add_argument("--host", default=None,
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 to accept other machines)")
    p.add_argument("--config", default=None,
                   help="Serve config YAML (e.g. lipsync/configs/serve.yaml): its application args and http_options; "
                        "the flags below override it")
    p.add_argument("--profile", default=None, help="model profile (default tiny)")
    p.add_argument("--checkpoint_dir", default=None, help="folder with the profile's weight files")
    p.add_argument("--device", default=None, help="model device: auto (default), cpu, cuda")
    p.add_argument("--num_gpus", default=None, help="GPUs per model replica: auto (default), 0, 1, 0.5 ...")
    p.add_argument("--num_cpus", type=float, default=None, help="CPUs per model replica (default 1)")
    p.add_argument("--replicas", type=int, default=None, help="model replicas (default 1)")
    p.add_argument("--state_dir", default=None,
                   help="folder for the job database, job files and request temp files "
                        "(default $LIPSYNC_STATE_DIR or ~/.local/state/lipsync/serve)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (e.g. auto, ray://head:10001); default: a local Ray instance")
    p.add_argument("--api_key", default=None,
                   help="require this key on every route but /healthz, the page and /docs: "
                        "'Authorization: Bearer KEY' or 'X-API-Key: KEY', else 401 (default: $LIPSYNC_API_KEY, "
                        "else the config's access.api_key, else none)")
    p.add_argument("--cors_origins", default=None,
                   help="comma-separated origins whose browser pages may call the API (CORS); default none: "
                        "no CORS headers, cross-origin POST/DELETE refused")
    p.add_argument("--max_pending_requests", type=int, default=None,
                   help="POST /generate running or waiting per ingress replica before 503 + Retry-After (default 8)")
    p.add_argument("--max_queued_jobs", type=int, default=None,
                   help="jobs queued or running before POST /jobs answers 503 + Retry-After (default 100)")
    p.add_argument("--startup_timeout", type=float, default=900.0,
                   help="seconds to wait for Ray, the HTTP proxy and the replicas to start before giving up "
                        "(default 900)")
    p.set_defaults(func=cmd_serve)


def settings_from_args(args) -> tuple[dict, dict]:
    """(application args, http options) from --config and the flags."""
    from serve.config import load_settings, merge

    app_args: dict = {}
    http: dict = {}
    if args.config:
        import yaml

        with open(args.config) as f:
            doc = yaml.safe_load(f) or {}
        apps = doc.get("applications") or []
        if apps:
            app_args = dict(apps[0].get("args") or {})
        http = dict(doc.get("http_options") or {})
    cors = getattr(args, "cors_origins", None)
    overrides = {
        "mode": args.mode,
        "state_dir": args.state_dir,
        "model": {"profile": args.profile, "checkpoint_dir": args.checkpoint_dir, "device": args.device,
                  "num_gpus": args.num_gpus, "num_cpus": args.num_cpus, "num_replicas": args.replicas},
        "limits": {"max_pending_requests": getattr(args, "max_pending_requests", None)},
        "jobs": {"max_queued": getattr(args, "max_queued_jobs", None)},
        "access": {"api_key": getattr(args, "api_key", None),
                   "cors_origins": [o.strip() for o in cors.split(",") if o.strip()] if cors else None},
    }
    if args.replicas is not None:
        app_args.setdefault("model", {}).pop("autoscaling", None)
    app_args = merge(app_args, overrides)
    settings = load_settings(app_args)  # fail here, before Ray starts, on a bad config
    http["host"] = args.host or http.get("host") or "127.0.0.1"
    http["port"] = args.port or http.get("port") or DEFAULT_PORTS[settings.mode]
    return settings.to_dict(), http


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def check_port_free(host: str, port: int) -> None:
    """Fail now, with a line naming the port, when something already listens there (a `lipsync serve`
    still running or still stopping): Serve's proxy would otherwise fail to bind and be restarted
    over and over."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as err:
            raise StartupError(f"cannot listen on {host}:{port}: {err.strerror or err} (another `lipsync serve` "
                               "or program is using the port; stop it or choose another --port)") from None


def lock_port(host: str, port: int):
    """Hold ``<tmp>/lipsync-serve-<port>.lock`` while this command runs (the OS drops it when the
    process ends, however it ends). Ray Serve's proxy binds with SO_REUSEPORT, so a second server
    started on the same port would not fail: it would silently share the port with the first (each
    request going to either); the lock makes the second one stop at once, naming the first."""
    import fcntl
    import tempfile

    path = os.path.join(tempfile.gettempdir(), f"lipsync-serve-{port}.lock")
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        other = f.read().strip() or "?"
        f.close()
        raise StartupError(f"another `lipsync serve` (pid {other}) is starting or serving on port {port}; "
                           "stop it first, or choose another --port") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def _one_line(text: str, limit: int = 300) -> str:
    """The gist of a Ray error message: its last non-empty line that says something (Ray's messages
    end with the cause), squeezed to one line."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip() and not ln.strip().startswith(("File ", "^"))]
    gist = lines[-1] if lines else str(text)
    for line in reversed(lines):  # the exception line of a traceback: "SomeError: what went wrong"
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception")) and " " not in head:
            gist = line
            break
    gist = " ".join(gist.split())
    return gist if len(gist) <= limit else gist[: limit - 3] + "..."


class Waiter:
    """Progress lines while start-up waits: what it waits for and for how long, every ``every`` s."""

    def __init__(self, deadline: float, every: float = 10.0):
        self.deadline = deadline
        self.every = every
        self.t0 = time.monotonic()
        self.last = ("", 0.0)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, what: str) -> None:
        now = time.monotonic()
        if what != self.last[0] or now - self.last[1] >= self.every:
            _say(f"waiting for {what} ({now - self.t0:.0f} s) ...")
            self.last = (what, now)


def _run_with_progress(fn, what: str, waiter: Waiter):
    """``fn()`` in a thread while the main thread says what it waits for (Ctrl-C still works)."""
    import concurrent.futures as cf

    pool = cf.ThreadPoolExecutor(1, thread_name_prefix="lipsync-start")
    future = pool.submit(fn)
    try:
        while True:
            try:
                return future.result(timeout=1.0)
            except cf.TimeoutError:
                if waiter.left() <= 0:
                    raise StartupError(f"gave up waiting for {what} after {time.monotonic() - waiter.t0:.0f} s "
                                       "(--startup_timeout); the machine may be overloaded") from None
                waiter.say(what)
    finally:
        pool.shutdown(wait=False)


def _wait_for_proxy(serve, waiter: Waiter, port: int) -> None:
    """After serve.start lost its proxy (killed or slow): the controller starts another; wait for it."""
    while True:
        try:
            proxies = serve.status().proxies
        except Exception:
            proxies = {}
        states = {str(getattr(s, "value", s)) for s in proxies.values()}
        if "HEALTHY" in states:
            return
        if waiter.left() <= 0:
            raise StartupError(f"Ray Serve's HTTP proxy did not start within {time.monotonic() - waiter.t0:.0f} s "
                               f"(proxy states: {', '.join(sorted(states)) or 'none'}); is port {port} free? "
                               "Try again, or raise --startup_timeout on a busy machine")
        waiter.say(f"Ray Serve's HTTP proxy on port {port} to start ({', '.join(sorted(states)) or 'starting'})")
        time.sleep(1.0)


def _wait_for_app(serve, name: str, waiter: Waiter) -> None:
    """Until the application runs: which deployment waits for what, or one line when it failed."""
    labels = {"LipSyncModel": "the model replica to load", "LipSyncIngress": "the HTTP ingress replica to start"}
    while True:
        app = serve.status().applications.get(name)
        status = str(getattr(app.status, "value", app.status)) if app else "NOT_STARTED"
        if status == "RUNNING":
            return
        if status == "DEPLOY_FAILED":
            bad = [(d, s) for d, s in (app.deployments or {}).items()
                   if str(getattr(s.status, "value", s.status)) in ("DEPLOY_FAILED", "UNHEALTHY")]
            where, why = (bad[0][0], bad[0][1].message) if bad else ("the application", app.message)
            raise StartupError(f"{where} failed to start: {_one_line(why)} (`ray logs` or "
                               f"/tmp/ray/session_latest/logs/serve/ have the details)")
        if waiter.left() <= 0:
            raise StartupError(f"the application was not running after {time.monotonic() - waiter.t0:.0f} s "
                               f"(status {status}); the machine may be overloaded: raise --startup_timeout")
        waiting = []
        for dep, st in ((app.deployments or {}) if app else {}).items():
            if str(getattr(st.status, "value", st.status)) != "HEALTHY":
                running = (st.replica_states or {}).get("RUNNING", 0)
                waiting.append(f"{labels.get(dep, dep)}" + (f" ({running} running)" if running else ""))
        waiter.say(" and ".join(waiting) if waiting else f"the application ({status.lower()})")
        time.sleep(1.0)


def cmd_serve(args) -> int:
    app_args, http = settings_from_args(args)
    joined = bool(args.address or os.environ.get("RAY_ADDRESS"))
    port_lock = None
    if not joined:
        port_lock = lock_port(http["host"], http["port"])  # noqa: F841 - held until the process ends
        check_port_free(http["host"], http["port"])
    for key, value in CONTROLLER_ENV.items():  # a local Ray instance (and its controller) inherits these
        os.environ.setdefault(key, value)
    waiter = Waiter(time.monotonic() + max(10.0, args.startup_timeout))
    _say(f"starting LipSync ({app_args['mode']} mode, profile {app_args['model']['profile']}, "
         f"port {http['port']}) ...")
    import ray
    from ray import serve
    from ray.exceptions import RayError

    from serve.app import build_app

    # --address or RAY_ADDRESS: join that cluster (others may be using it); otherwise start a local
    # Ray instance of our own, even if one started with `ray start` is around.
    started_ray = started_serve = False
    try:
        _say("starting a local Ray instance ..." if not joined else
             f"joining the Ray cluster at {args.address or os.environ.get('RAY_ADDRESS')} ...")
        try:
            ray.init(address=args.address if joined else "local", log_to_driver=False)
        except (RayError, ConnectionError, RuntimeError, TimeoutError, OSError) as err:
            raise StartupError(f"Ray did not start: {_one_line(err)}") from None
        started_ray = True
        # `kill`, a container stop: clean up as Ctrl-C does (set after ray.init, which installs its own)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        controller = {"runtime_env": {"env_vars": {k: os.environ[k] for k in CONTROLLER_ENV}}}
        try:
            _run_with_progress(lambda: serve.start(http_options={"host": http["host"], "port": http["port"]},
                                                   controller_options=controller),
                               f"Ray Serve's HTTP proxy on port {http['port']} to start", waiter)
        except (RayError, TimeoutError) as err:
            # The proxy serve.start waited on died or was slow; the controller starts another one.
            _say(f"the first HTTP proxy did not come up ({_one_line(err, 120)}); waiting for its replacement")
            _wait_for_proxy(serve, waiter, http["port"])
        started_serve = True
        app = build_app(app_args)
        try:
            deploy = getattr(serve, "_run", None)
            if deploy is not None:  # returns once the controller has the application; we wait below
                _run_with_progress(lambda: deploy(app, name="lipsync", route_prefix="/", _blocking=False),
                                   "Ray Serve to accept the application", waiter)
            else:
                _run_with_progress(lambda: serve.run(app, name="lipsync", route_prefix="/"),
                                   "the model and ingress replicas to start", waiter)
        except (RayError, RuntimeError) as err:
            raise StartupError(f"Ray Serve did not take the application: {_one_line(err)}") from None
        _wait_for_app(serve, "lipsync", waiter)
        host = "localhost" if http["host"] in ("0.0.0.0", "::", "127.0.0.1") else http["host"]
        url = f"http://{host}:{http['port']}/"
        key = " (API key required)" if app_args.get("access", {}).get("api_key") or os.environ.get(
            "LIPSYNC_API_KEY") else ""
        print(f"LipSync is serving on {url}{key} (API docs: {url}docs; job state in {app_args['state_dir']}; "
              f"ready after {time.monotonic() - waiter.t0:.0f} s); Ctrl-C stops it", flush=True)
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        _say("stopping ...")
        return 0
    finally:
        _stop(ray, serve, joined, started_ray, started_serve)


def _stop(ray, serve, joined: bool, started_ray: bool, started_serve: bool) -> None:
    """Take down what this command started; errors while stopping are one line, not a traceback."""
    try:
        if started_ray and (started_serve or not joined):
            if joined:
                serve.delete("lipsync")  # leave the cluster's other applications alone
            else:
                serve.shutdown()
    except Exception as err:  # noqa: BLE001 - stopping: report and go on
        _say(f"note: stopping Ray Serve: {_one_line(err, 160)}")
    finally:
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001
            pass
