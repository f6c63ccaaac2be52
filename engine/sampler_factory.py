"""One factory for every command: `ddpmrt sample`, `serve`, `report` and `bench` build samplers here.

    make_sampler("dpmsolver", schedule, 10, order=3)

One set of defaults (SAMPLER_DEFAULTS, per sampler) and one set of checks: an option the
sampler does not take (η for DPM-Solver++) is a one-line UserError naming the ones it does.
The Python classes keep their own constructor defaults (diffusers' conventions: DDIMSampler does
not clip unless asked); the commands clip x̂₀ to ±1 by default, as images lie in [-1, 1].
"""

from __future__ import annotations

from ddpmrt.engine.checks import shown
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.samplers import DEFAULT_SPACING, DDIMSampler, DDPMSampler, Sampler
from ddpmrt.engine.schedule import NoiseSchedule
from ddpmrt.engine.solvers import DPMSolverSampler, UniPCSampler

SAMPLER_CLASSES = {"ddim": DDIMSampler, "ddpm": DDPMSampler, "dpmsolver": DPMSolverSampler, "unipc": UniPCSampler}
SAMPLERS = tuple(SAMPLER_CLASSES)
# What a user gets unless told otherwise, by sampler: steps (network calls) and every option it takes.
SAMPLER_DEFAULTS = {
    "ddim": {"steps": 50, "eta": 0.0, "spacing": DEFAULT_SPACING, "clip_sample": 1.0},
    "ddpm": {"steps": 50, "variance": "fixed_small", "spacing": DEFAULT_SPACING, "clip_sample": 1.0},
    # The solvers' defaults are diffusers' (DPMSolverMultistepScheduler, UniPCMultistepScheduler).
    "dpmsolver": {"steps": 20, "order": 2, "solver_type": "midpoint", "spacing": "linspace", "clip_sample": 1.0},
    "unipc": {"steps": 20, "order": 2, "variant": "bh2", "corrector": True, "spacing": "linspace", "clip_sample": 1.0},
}
SAMPLER_OPTIONS = {name: tuple(k for k in defaults if k != "steps") for name, defaults in SAMPLER_DEFAULTS.items()}
# Every option any sampler takes: what the command line and a request body may carry.
ALL_OPTIONS = tuple(sorted({option for options in SAMPLER_OPTIONS.values() for option in options}))


def sampler_options(name: str) -> tuple[str, ...]:
    if name not in SAMPLER_CLASSES:
        raise UserError(f"unknown sampler {shown(name)}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLER_OPTIONS[name]


def make_sampler(name: str, schedule: NoiseSchedule, steps: int | None = None, **options) -> Sampler:
    """The sampler `name` with `steps` and the options it takes; an option left out or None gets its default.

    clip_sample: the clip value of x̂₀ (default 1.0); 0 turns clipping off.
    """
    allowed = sampler_options(name)
    given = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        deterministic = " (it is deterministic)" if name in ("dpmsolver", "unipc") and "eta" in unknown else ""
        raise UserError(f"the {name} sampler takes no {', '.join(unknown)}{deterministic}; "
                        f"its options are {', '.join(allowed)}")
    defaults = SAMPLER_DEFAULTS[name]
    settings = {key: given.get(key, defaults[key]) for key in allowed}
    return SAMPLER_CLASSES[name](schedule, num_steps=defaults["steps"] if steps is None else steps, **settings)
