"""`ddpmrt tune`: timesteps learned for one model, so that a few network calls give what many give.

    ddpmrt tune digits --sampler dpmsolver --order 3 --calls 4,5,6,8,10

For each call count, engine/tuning.py matches the sampler's images to a many-step teacher's from
the same noise, with network calls of the model alone (on any backend it loads with), and the
result is written where the model is found again (artifacts/schedules.py): `--spacing tuned` then
uses it in sample, serve, report and bench.
"""

from __future__ import annotations

import argparse
import datetime
import sys

from ddpmrt.engine.errors import UserError
from ddpmrt.export.cli.options import add_quiet, add_runtime, add_sampler_options, add_seed, int_in, sampler_options

NAME, OUTPUT = "tune", None


def add_parser(sub) -> None:
    from ddpmrt.engine.tuning import DEFAULT_TEACHER, DEFAULT_TRAJECTORIES

    p = sub.add_parser(NAME, help="learn a model's own timesteps for few network calls (then --spacing tuned)")
    p.add_argument("model", help="checkpoint directory, shipped model name, .onnx, .plan or .pt2")
    add_sampler_options(p)
    p.add_argument("--calls", default="4,5,6,8,10",
                   help="network calls per image to tune for, comma-separated (default 4,5,6,8,10)")
    p.add_argument("--teacher", default=DEFAULT_TEACHER,
                   help=f"the many-step sampler whose images are matched, as a report spec (default {DEFAULT_TEACHER}; "
                        "it clips as the tuned sampler does)")
    p.add_argument("--trajectories", type=int_in(1, 4096), default=DEFAULT_TRAJECTORIES,
                   help=f"starting noises matched, one batch (default {DEFAULT_TRAJECTORIES})")
    add_seed(p, "seed of the starting noises: the same seed gives the same timesteps")
    add_runtime(p)
    add_quiet(p)
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> None:
    from ddpmrt.engine import load_model
    from ddpmrt.engine.artifacts.schedules import TunedSchedules
    from ddpmrt.engine.backends import resolve_model_path
    from ddpmrt.engine.checks import int_list
    from ddpmrt.engine.sampler_factory import parse_spec
    from ddpmrt.engine.tuning import Tuner

    calls = int_list(ns.calls, "--calls", 1, 1000)
    options = sampler_options(ns)
    if ns.steps is not None:
        raise UserError("tune takes --calls (the step counts to tune for), not --steps")
    teacher = parse_spec(ns.teacher)  # a bad spec is one line before the model loads
    if teacher.steps is not None and max(calls) > teacher.steps:
        raise UserError(f"--calls {max(calls)} is more than the teacher's {teacher.steps} steps; "
                        "tune for fewer calls or give a longer --teacher")
    path = resolve_model_path(ns.model)
    table = TunedSchedules(path, ns.model)
    model = load_model(path, backend=ns.backend, device=ns.device, threads=ns.threads, cuda_graph=ns.cuda_graph,
                       precision=ns.precision)
    tuner = Tuner(model, model.schedule, ns.sampler, (ns.trajectories, *model.image_shape), ns.seed, ns.teacher,
                  progress=not ns.quiet, **options)
    for count in calls:  # every count checked against the order and the teacher before the long part
        tuner.check_calls(count)
    if not ns.quiet:
        print(f"teacher {ns.teacher}: {tuner.teacher_calls} network calls on {tuner.n} noises, "
              f"{tuner.teacher_seconds:.1f} s", file=sys.stderr)
    today = datetime.date.today().isoformat()
    entries, lines = [], []
    for count in calls:
        result = tuner.tune(count)
        entries.append({**result.as_dict(), "date": today, "backend": f"{model.backend}"})
        lines.append(f"  {count:>3} calls: {' '.join(map(str, result.timesteps))}  distance to the teacher "
                     f"{result.objective:.4f}, on other noises {result.heldout:.4f} (its own spacing "
                     f"{result.baseline:.4f}, {result.heldout_baseline:.4f}); {result.network_calls} calls, "
                     f"{result.seconds:.1f} s")
    written = table.write(entries)
    total = tuner.network_calls
    seconds = tuner.teacher_seconds + sum(e["seconds"] for e in entries)
    print(f"tuned {ns.sampler} for {', '.join(map(str, calls))} calls on {ns.model} "
          f"({total} network calls of {tuner.n} images, {seconds:.1f} s):")
    print("\n".join(lines))
    print(f"wrote {written}; use them with --spacing tuned")
