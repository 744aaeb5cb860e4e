"""The ``serve`` command: ``python -m core serve [--host 127.0.0.1] [--port 8000] [--backend local|ray]``.

The local backend runs :func:`core.api.app.create_app` under uvicorn (h11, with the connection limits of
docs/SECURITY.md); ``--backend ray`` hands the same app to a Ray Serve deployment (:mod:`core.cluster.serve`). The app
factory and this command live apart, so that the Ray replica can build the app without importing the command.
"""

from __future__ import annotations

import argparse
import logging
import sys

from core.api.app import create_app
from core.errors import RequestError, UUSICError
from core.settings import Settings

H11_MAX_HEADER_BYTES = 16 * 1024  # request line + headers; more is refused by uvicorn
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this many seconds


def main(argv: list[str] | None = None) -> int:
    """``python -m core serve [--host 127.0.0.1] [--port 8000]``."""
    parser = argparse.ArgumentParser(prog="python -m core serve", description="start the HTTP inference API")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of the inference runtime (OpenVINO or torch)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--micro-batch", choices=["auto", "on", "off"], default=None,
                        help="group concurrent requests into one forward pass (default: UUSIC_MICRO_BATCH, auto: "
                             "on CUDA only)")
    parser.add_argument("--backend", choices=["local", "ray"], default="local",
                        help="local: this process (uvicorn, default); ray: a Ray Serve deployment (needs "
                             "requirements-cluster.txt, see docs/DEPLOY.md)")
    ray_options = parser.add_argument_group("--backend ray")
    ray_options.add_argument("--address", default=None,
                             help="join the Ray cluster at ADDR (e.g. head-host:6379); default: start a local Ray")
    ray_options.add_argument("--replicas", default=None,
                             help="replicas, one loaded model each: N, or MIN-MAX to let Ray Serve add and remove "
                                  "replicas with the load (default 1)")
    ray_options.add_argument("--num-gpus-per-replica", type=float, default=None, help="GPUs per replica (default 0)")
    ray_options.add_argument("--num-cpus-per-replica", type=float, default=None, help="CPUs per replica (default 1)")
    args = parser.parse_args(argv)
    if args.backend == "ray":
        return _serve_on_ray(args)
    given = [flag for flag, value in (("--address", args.address), ("--replicas", args.replicas),
                                      ("--num-gpus-per-replica", args.num_gpus_per_replica),
                                      ("--num-cpus-per-replica", args.num_cpus_per_replica)) if value is not None]
    if given:
        parser.error(f"{', '.join(given)} only go with --backend ray")
    import uvicorn

    if args.threads:
        from core.models import backends

        backends.set_threads(args.threads)  # never imports torch: a cached converted model serves without it
    settings = _serve_settings(args)
    if settings is None:
        return 2
    try:
        app = create_app(settings, preload=True)
    except UUSICError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:  # the workspace is a file, read-only, on a missing disk...
        print(f"error: the workspace {settings.workspace} cannot be used: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"serving on http://{args.host}:{args.port} (docs at /docs); workspace {settings.workspace}",
          file=sys.stderr, flush=True)
    # h11 (not httptools) so that the header size limit applies, with a deadline for each request head
    # (core.api.head_deadline); limit_concurrency answers 503 past UUSIC_MAX_CONNECTIONS connections + requests;
    # stalled bodies are cut by core.api.limits.BodyLimit
    from core.api.head_deadline import HeadDeadlineH11Protocol

    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                http=HeadDeadlineH11Protocol.with_timeout(settings.head_timeout_s),
                timeout_keep_alive=KEEP_ALIVE_S, h11_max_incomplete_event_size=H11_MAX_HEADER_BYTES,
                limit_concurrency=settings.max_connections)
    return 0


def _serve_on_ray(args: argparse.Namespace) -> int:
    """``serve --backend ray``: the same app in the replicas of a Ray Serve deployment (:mod:`core.cluster.serve`)."""
    from core.cluster import import_ray, parse_replicas

    args.num_gpus_per_replica = args.num_gpus_per_replica or 0.0
    args.num_cpus_per_replica = args.num_cpus_per_replica or 1.0
    try:
        import_ray()
        args.replicas = parse_replicas(args.replicas)
        if args.num_gpus_per_replica < 0 or args.num_cpus_per_replica <= 0:
            raise RequestError("--num-gpus-per-replica must be >= 0 and --num-cpus-per-replica > 0")
    except UUSICError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    from core.cluster.serve import serve_main

    settings = _serve_settings(args)
    return 2 if settings is None else serve_main(args, settings)


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a record is written (a handler never keeps a stream that may close)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _serve_settings(args: argparse.Namespace) -> Settings | None:
    """Logging set up and the settings of a ``serve`` command (None, with the error printed, when they are bad)."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=_CurrentStderr())
    try:
        settings = Settings.from_env()
        return settings.with_(micro_batch=args.micro_batch) if args.micro_batch else settings
    except UUSICError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return None
