"""``lipsync serve``: the HTTP API (and web page) on Ray Serve. Registered with ``lipsync`` through the
``lipsync.commands`` entry point ``serve = serve.cli:add_parsers`` (pyproject.toml). Imports no Ray
until it runs."""

from __future__ import annotations

import signal
import sys
import time

DEFAULT_PORTS = {"api": 8000, "web": 7860}


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
    overrides = {
        "mode": args.mode,
        "state_dir": args.state_dir,
        "model": {"profile": args.profile, "checkpoint_dir": args.checkpoint_dir, "device": args.device,
                  "num_gpus": args.num_gpus, "num_cpus": args.num_cpus, "num_replicas": args.replicas},
    }
    if args.replicas is not None:
        app_args.setdefault("model", {}).pop("autoscaling", None)
    app_args = merge(app_args, overrides)
    settings = load_settings(app_args)  # fail here, before Ray starts, on a bad config
    http["host"] = args.host or http.get("host") or "127.0.0.1"
    http["port"] = args.port or http.get("port") or DEFAULT_PORTS[settings.mode]
    return settings.to_dict(), http


def cmd_serve(args) -> int:
    import os

    app_args, http = settings_from_args(args)
    import ray
    from ray import serve

    from serve.app import build_app

    # --address or RAY_ADDRESS: join that cluster (others may be using it); otherwise start a local
    # Ray instance of our own, even if one started with `ray start` is around.
    joined = bool(args.address or os.environ.get("RAY_ADDRESS"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill`, a container stop: clean up as Ctrl-C does
    ray.init(address=args.address if joined else "local", log_to_driver=False)
    try:
        serve.start(http_options={"host": http["host"], "port": http["port"]})
        app = build_app(app_args)
        print(f"starting LipSync ({app_args['mode']} mode, profile {app_args['model']['profile']}) ...",
              file=sys.stderr, flush=True)
        serve.run(app, name="lipsync", route_prefix="/")
        host = "localhost" if http["host"] in ("0.0.0.0", "::", "127.0.0.1") else http["host"]
        url = f"http://{host}:{http['port']}/"
        print(f"LipSync is serving on {url} (API docs: {url}docs; job state in {app_args['state_dir']}); "
              "Ctrl-C stops it", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping ...", file=sys.stderr)
        return 0
    finally:
        try:
            if joined:
                serve.delete("lipsync")  # leave the cluster's other applications alone
            else:
                serve.shutdown()
        finally:
            ray.shutdown()
