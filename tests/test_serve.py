"""`ddpmrt serve`: Ray Serve on this machine (loopback only), the shipped digits model on ONNX Runtime.

200 requests from 16 concurrent clients: every response equals what that request gets alone
(bitwise: batching changes throughput, never an image), none is lost or duplicated, batches of
several requests did form, and bad bodies get 400 with one line.
"""

import io
import json
import os
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="needs Ray Serve: pip install -e '.[serve]'")
serve = pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install -e '.[serve]'")
pytest.importorskip("torch", reason="exports the shipped model to ONNX")

from ddpmrt.engine import UserError  # noqa: E402
from ddpmrt.engine.serve import SamplingService, build_app, parse_request  # noqa: E402

REQUESTS, CLIENTS, TIMEOUT_S = 200, 16, 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    from ddpmrt.export.conversion.onnx_export import export_onnx
    from ddpmrt.export.model.sources import from_checkpoint

    path = tmp_path_factory.mktemp("serve") / "digits.onnx"
    source = from_checkpoint("digits", "fp32")
    export_onnx(source.module, source.metadata, path)
    return path


@pytest.fixture(scope="module")
def server(onnx_model):
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": TIMEOUT_S})
        handle = serve.run(build_app(str(onnx_model), max_batch=8, batch_wait_ms=20, max_queued=1000, threads=1),
                           name="ddpmrt", route_prefix="/")
        yield f"http://127.0.0.1:{port}", handle
    finally:
        serve.shutdown()
        ray.shutdown()


def post(url: str, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + "/sample", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, response.read(), response.headers  # case-insensitive names
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def request_bodies():
    rng = np.random.default_rng(12)
    bodies = []
    for i in range(REQUESTS):
        sampler = ["ddim", "ddpm"][i % 2]
        bodies.append({"sampler": sampler, "steps": 3, "n": int(rng.integers(1, 4)), "seed": int(rng.integers(0, 2 ** 40)),
                       "format": "npz", **({"eta": 0.5} if sampler == "ddim" and i % 4 == 0 else {})})
    return bodies


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc's parent links."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def test_the_serve_command(onnx_model, tmp_path):
    # The command line as a user runs it: its own Ray instance, HTTP on loopback, stopped by SIGTERM sent to
    # the serve process alone (as a service manager does), which must leave no process it started behind.
    # (Runs before the module's in-process Ray is started.)
    import signal
    import subprocess
    import sys
    import threading
    import time

    if not os.path.isdir("/proc/self"):
        pytest.skip("finds the processes serve started through /proc (Linux)")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", "import sys; from ddpmrt.export.cli import main; sys.exit(main())",
                                "serve", str(onnx_model), "--port", str(port), "--max-batch", "4"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    started = []
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status, content, _ = post(f"http://127.0.0.1:{port}", {"steps": 2, "n": 1, "format": "npz"})
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(1)  # no listener yet, or Serve's proxy up before the app (404)
        assert status == 200, "".join(lines) if process.poll() is not None else f"no answer in 120 s ({status})"
        assert np.load(io.BytesIO(content))["images"].shape == (1, 16, 16, 1)
        while time.monotonic() < deadline and not any("ddpmrt serve:" in line for line in lines):
            time.sleep(0.2)
        started = descendants(process.pid)
        assert started, "serve started no Ray processes?"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
    output = "".join(lines)
    # SIGTERM shuts Serve and Ray down as Ctrl-C does, and exits 130; nothing it started outlives it by 15 s.
    assert "Traceback" not in output and process.returncode == 130, output[-2000:]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(running(pid) for pid in started):
        time.sleep(0.5)
    assert not [pid for pid in started if running(pid)], {pid: command_line(pid) for pid in started if running(pid)}
    # The server's own line is the last a user reads (Ray's INFO lines go to its log files), before the stop.
    banner = [i for i, line in enumerate(lines) if line.startswith("ddpmrt serve:")]
    assert banner and all(line.startswith("ddpmrt: interrupted") or not line.strip() for line in lines[banner[0] + 1:]), output


def test_serve_argument_errors(tmp_path):
    from conftest import assert_user_error, run_cli

    assert_user_error(run_cli("serve", "no-such-model"), "not found")
    assert_user_error(run_cli("serve", "digits", "--port", "70000"), "outside [1, 65535]")
    assert_user_error(run_cli("serve", "digits", "--max-batch", "0"), "outside [1, 1024]")
    assert_user_error(run_cli("serve", "digits", "--max-ongoing", "-2"), "outside [1, 100000]")


def test_concurrent_requests_get_their_own_images(server, onnx_model):
    url, _ = server
    bodies = request_bodies()
    with ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(lambda body: post(url, body), bodies))
    assert len(responses) == REQUESTS
    local = SamplingService(str(onnx_model), threads=1)
    assert getattr(local.model, "static_shapes", False) is False  # OpenVINO: one compile for every batch size
    batch_sizes = []
    for body, (status, content, headers) in zip(bodies, responses):
        assert status == 200, content[:200]
        images = np.load(io.BytesIO(content))["images"]
        (expected,) = local.run_batch([local.parse(body)])  # the same request, alone
        assert images.shape == (body["n"], 16, 16, 1)
        np.testing.assert_array_equal(images, expected)
        batch_sizes.append(int(headers["X-Batch-Requests"]))
    assert max(batch_sizes) > 1, "no two requests were ever batched"


def test_health_metadata_and_png(server):
    url, _ = server
    with urllib.request.urlopen(url + "/healthz", timeout=30) as response:
        assert json.loads(response.read()) == {"status": "ok"}
    with urllib.request.urlopen(url + "/metadata", timeout=30) as response:
        meta = json.loads(response.read())
    from ddpmrt.engine.backends import openvino_backend

    default = "openvino" if openvino_backend.available() else "onnxruntime"  # load_model's .onnx default on the CPU
    assert meta["image_shape"] == [1, 16, 16] and meta["backend"] == default and meta["schedule"]["kind"] == "linear"
    status, content, headers = post(url, {"steps": 2, "n": 4, "seed": 1})
    assert status == 200 and headers["content-type"] == "image/png" and content[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("body,fragment", [
    ({"sampler": "euler"}, "unknown sampler"),
    ({"steps": 0}, "'steps': the number of steps must be an integer from 1 to the model's training timesteps (1000)"),
    ({"steps": 5000}, "'steps': the number of steps must be an integer from 1 to the model's training timesteps (1000)"),
    ({"n": 1000}, "'n' must lie in [1, 64]"),
    ({"steps": "5"}, "got '5'"),
    ({"seed": 1.5}, "'seed' must be an integer"),
    ({"eta": "a lot"}, "eta must be a number"),
    ({"sampler": "ddpm", "eta": 0.5}, "the ddpm sampler takes no eta"),
    ({"variance": "fixed_huge", "sampler": "ddpm"}, "unknown variance"),
    ({"format": "gif"}, "unknown format"),
    ({"stepz": 5}, "unknown fields"),
    ([1, 2], "must be a JSON object"),
    (b"{not json", "not JSON"),
    (b"[" * 2000 + b"]" * 2000, "nests arrays or objects"),                 # deeper than json.loads can recurse
    (b'{"steps": [[50]]}', "nests arrays or objects"),
    (b'{"seed": 1' + b" " * 200_000 + b"}", "larger than 4096 bytes"),     # 413, before it is read
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_bad_requests_get_400_or_413(server, body, fragment):
    url, _ = server
    status, content, _ = post(url, body)
    assert status == (413 if b" " * 1000 in body else 400)
    error = json.loads(content)["error"]
    assert fragment in error and "\n" not in error
    assert post(url, {"steps": 2, "n": 1})[0] == 200  # and the replica serves the next request


def test_the_handle_serves_python_callers(server, onnx_model):
    _, handle = server
    body = {"sampler": "ddpm", "steps": 3, "n": 2, "seed": 99}
    images = handle.sample.remote(body).result(timeout_s=TIMEOUT_S)
    local = SamplingService(str(onnx_model), threads=1)
    np.testing.assert_array_equal(images, local.run_batch([local.parse(body)])[0])


def test_a_full_queue_is_answered_503(server, onnx_model):
    # One request running and one waiting per replica: the rest are refused at once, not queued without bound.
    url, _ = server
    serve.run(build_app(str(onnx_model), max_batch=1, max_ongoing=1, max_queued=1, threads=1),
              name="tight", route_prefix="/tight")
    body = {"steps": 200, "n": 16, "format": "npz"}
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: post(url + "/tight", body), range(12)))
    codes = [status for status, _, _ in results]
    assert 503 in codes and 200 in codes and set(codes) <= {200, 503}, codes
    refused = next(content for status, content, _ in results if status == 503)
    assert b"backpressure" in refused.lower() or b"max_queued_requests" in refused
    serve.delete("tight")


def test_a_dead_replica_is_restarted_and_a_retry_succeeds(server, onnx_model):
    import time

    url, _ = server
    serve.run(build_app(str(onnx_model), threads=1), name="fragile", route_prefix="/fragile")
    body = {"sampler": "ddim", "steps": 3, "n": 2, "seed": 5, "format": "npz"}
    assert post(url + "/fragile", body)[0] == 200
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::") and "fragile" in a["name"]]
    assert len(replicas) == 1, replicas
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    local = SamplingService(str(onnx_model), threads=1)
    expected = local.run_batch([local.parse(body)])[0]
    deadline = time.monotonic() + 90
    while True:  # what a client does: retry a failed request
        try:
            status, content, _ = post(url + "/fragile", body)
        except OSError:
            status = None
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 200, "no replica came back within 90 s"
    np.testing.assert_array_equal(np.load(io.BytesIO(content))["images"], expected)
    serve.delete("fragile")


def test_parse_request_defaults_and_limits():
    from ddpmrt.engine import NoiseSchedule, make_sampler

    schedule = NoiseSchedule.linear()
    request = parse_request({}, schedule)
    assert (request.sampler, request.n, request.format) == ("ddim", 1, "png")
    # The sampler a request gets is `ddpmrt sample`'s, with the same defaults (make_sampler).
    assert request.make_sampler(schedule).config == make_sampler("ddim", schedule).config
    assert request.make_sampler(schedule).config["clip_sample"] is None       # the commands do not clip
    assert parse_request({"clip_sample": 1}, schedule).make_sampler(schedule).clip_sample == 1.0
    assert parse_request({"clip_sample": 0}, schedule).make_sampler(schedule).clip_sample is None
    assert parse_request({"clip_sample": None}, schedule).make_sampler(schedule).clip_sample is None
    ddpm = parse_request({"sampler": "ddpm", "variance": "fixed_large", "spacing": "trailing", "steps": 20}, schedule)
    assert ddpm.make_sampler(schedule).config == make_sampler("ddpm", schedule, 20, variance="fixed_large",
                                                              spacing="trailing").config
    unipc = parse_request({"sampler": "unipc", "steps": 8, "order": 3, "variant": "bh1", "corrector": False}, schedule)
    assert unipc.make_sampler(schedule).config == make_sampler("unipc", schedule, 8, order=3, variant="bh1",
                                                               corrector=False).config
    # Timesteps as data: a flat array, grouped by value (requests with the same list share a call).
    tuned = parse_request({"sampler": "dpmsolver", "order": 3, "timesteps": [999, 800, 500, 200, 20]}, schedule)
    assert tuned.options == (("order", 3), ("timesteps", (999, 800, 500, 200, 20)))
    assert tuned.make_sampler(schedule).num_steps == 5 and hash(tuned.settings)
    for body, fragment in (({"sampler": "dpmsolver", "eta": 0.5}, "takes no eta"),
                           ({"sampler": "unipc", "order": 4}, "order must be an integer from 1 to 3"),
                           ({"timesteps": [999, 999]}, "strictly decreasing"),
                           ({"timesteps": [999, 500], "steps": 3}, "2 timesteps for 3 steps"),
                           ({"timesteps": [999, 500], "spacing": "trailing"}, "timesteps or a spacing, not both"),
                           ({"eta": [0.5]}, "must be a number or a string"),
                           ({"sampler": "dpmsolver", "steps": 2, "order": 3}, "needs at least 3 steps")):
        with pytest.raises(UserError, match=fragment):
            parse_request(body, schedule)
    with pytest.raises(UserError, match=r"'n' must lie in \[1, 8\]"):
        parse_request({"n": 9}, schedule, max_images=8)


def test_batch_chunks_keep_within_the_models_largest_batch():
    from ddpmrt.engine.serve import batch_chunks

    assert batch_chunks([0, 1, 2, 3, 4], [3, 3, 3, 8, 1], 8) == [[0, 1], [2], [3], [4]]
    assert batch_chunks([5, 7], [4, 4], 4) == [[5], [7]]
    assert batch_chunks([0, 1, 2], [100, 200, 300], None) == [[0, 1, 2]]


def test_merged_requests_stay_within_a_static_batch(tmp_path):
    # Three n=4 requests to a model exported for batch 4 used to be merged into one call of 12 images
    # and all answered 400; each is valid alone, so each runs in a call of its own now.
    from ddpmrt.export.conversion.onnx_export import export_onnx
    from ddpmrt.export.model.sources import from_checkpoint

    source = from_checkpoint("digits", "fp32")
    path = tmp_path / "b4.onnx"
    export_onnx(source.module, source.metadata, path, batch=4, check=False)
    service = SamplingService(str(path), threads=1)
    assert service.model.batch_range == (4, 4)
    requests = [service.parse({"steps": 2, "n": 4, "seed": seed, "format": "npz"}) for seed in (1, 2, 3)]
    together = service.run_batch(requests)
    for request, images in zip(requests, together):
        (alone,) = service.run_batch([request])
        np.testing.assert_array_equal(images, alone)
    with pytest.raises(UserError, match="exported for batch 4, got 2"):  # invalid alone: its own 400
        service.parse({"steps": 2, "n": 2})
