"""`ddpmrt serve`: Ray Serve on this machine, or on the Ray cluster named by --address (engine/serve.py)."""

from __future__ import annotations

import argparse
import logging
import signal
import time

from ddpmrt.engine.errors import UserError, install_hint
from ddpmrt.export.cli.options import MAX_BATCH, add_backend, add_threads, int_in, real_in

NAME, OUTPUT = "serve", None


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="serve a model over HTTP with Ray Serve (batching, replicas, back-pressure)")
    p.add_argument("model", help="an .onnx or .plan file, checkpoint directory or shipped model name (on every node)")
    add_backend(p, "(default auto: by file type, as ddpmrt sample)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu, or cuda: one replica per GPU of the cluster (default cpu)")
    p.add_argument("--replicas", type=int_in(1, 4096), help="replicas (default: one per GPU on cuda, else 1)")
    p.add_argument("--max-batch", type=int_in(1, 1024), default=8, help="requests per batch (default 8)")
    p.add_argument("--batch-wait-ms", type=real_in(0, 10_000), default=5.0,
                   help="how long a batch waits for more requests (default 5 ms)")
    p.add_argument("--no-batching", action="store_true", help="run every request alone")
    p.add_argument("--max-ongoing", type=int_in(1, 10 ** 5),
                   help="requests a replica runs or batches at once (Serve's max_ongoing_requests; default 2 x --max-batch)")
    p.add_argument("--max-queued", type=int_in(1, 10 ** 6), default=64,
                   help="requests waiting for a replica before Serve answers 503 (default 64)")
    p.add_argument("--request-timeout-s", type=real_in(0, 86_400, low_open=True), default=120.0,
                   help="a request running longer is answered 408 (default 120 s)")
    p.add_argument("--max-images", type=int_in(1, MAX_BATCH), default=64, help="images per request (default 64)")
    p.add_argument("--max-body-bytes", type=int_in(64, 1 << 30), default=4096,
                   help="larger request bodies are answered 413 unread (default 4096)")
    add_threads(p, "CPU threads per replica", "1")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int_in(1, 65535), default=8000, help="HTTP port (default 8000)")
    p.add_argument("--address", help="a running Ray cluster (e.g. auto or ray://head:10001); default: start one here")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's and Serve's own log lines here (default: they go to Ray's log folder)")
    p.set_defaults(func=run)


def _stop_on_signals() -> None:
    """SIGTERM (and SIGHUP) end the server as Ctrl-C does: Python's default for them exits at once, before the
    `finally` that shuts Serve and Ray down, which left Ray's agents running."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)


def run(ns: argparse.Namespace) -> None:
    from ddpmrt.engine.backends import resolve_model_path
    from ddpmrt.engine.serve import build_app, check_model_apart

    model = str(resolve_model_path(ns.model))
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UserError(f"serving needs Ray Serve: {install_hint('serve')}") from None
    check_model_apart(model, ns.backend, ns.device, ns.threads)  # one line in seconds, not Serve's retries
    if not ns.verbose:  # Serve's INFO lines (the controller, proxies, deployments) stay in Ray's log files
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    ray.init(address=ns.address, include_dashboard=False, logging_level="INFO" if ns.verbose else "ERROR",
             log_to_driver=ns.verbose)
    _stop_on_signals()  # after ray.init, which installs its own SIGTERM handler (it aborts the driver)
    try:
        serve.start(http_options={"host": ns.host, "port": ns.port, "request_timeout_s": ns.request_timeout_s})
        app = build_app(model, backend=ns.backend, device=ns.device, replicas=ns.replicas, max_batch=ns.max_batch,
                        batch_wait_ms=ns.batch_wait_ms, max_ongoing=ns.max_ongoing, max_queued=ns.max_queued,
                        threads=ns.threads, max_images=ns.max_images, batching=not ns.no_batching,
                        max_body_bytes=ns.max_body_bytes)
        serve.run(app, name="ddpmrt", route_prefix="/")
        print(f"ddpmrt serve: {model} on http://{ns.host}:{ns.port} (POST /sample, GET /healthz, GET /metadata); "
              "Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    finally:
        if ns.address:  # a cluster that outlives us: take Serve down there; our own local one goes whole below
            serve.shutdown()
        ray.shutdown()
