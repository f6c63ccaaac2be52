"""One factory for every command: `ddpmrt sample`, `serve`, `report` and `bench` build samplers here.

    make_sampler("dpmsolver", schedule, 10, order=3)
    parse_spec("dpmsolver:10:order=3").make(schedule)       # a report's sampler spec

The options, their defaults and checks are the sampler classes' declarations (Sampler.OPTIONS);
this module adds only what the commands do differently from the classes: they do not clip x̂₀ unless
asked (Option.command_default; measured: only no clipping keeps more steps from giving worse images, and
DDPM scores the same either way), where DDPMSampler keeps diffusers' default of ±1.
An option a sampler does not take (η for DPM-Solver++) is a one-line UserError naming the ones it does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ddpmrt.engine.checks import shown
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.sampler_options import Option
from ddpmrt.engine.samplers import DDIMSampler, DDPMSampler, Sampler
from ddpmrt.engine.schedule import NoiseSchedule
from ddpmrt.engine.solvers import DPMSolverSampler, IPNDMSampler, UniPCSampler

SAMPLER_CLASSES = {cls.NAME: cls for cls in (DDIMSampler, DDPMSampler, DPMSolverSampler, UniPCSampler, IPNDMSampler)}
SAMPLERS = tuple(SAMPLER_CLASSES)


def sampler_class(name: str) -> type[Sampler]:
    if name not in SAMPLER_CLASSES:
        raise UserError(f"unknown sampler {shown(name)}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLER_CLASSES[name]


def sampler_options(name: str) -> tuple[str, ...]:
    return tuple(option.name for option in sampler_class(name).OPTIONS)


def all_options() -> dict[str, list[tuple[str, Option]]]:
    """Every option any sampler takes, with the samplers that declare it: what a flag or a request may carry."""
    table: dict[str, list[tuple[str, Option]]] = {}
    for name, cls in SAMPLER_CLASSES.items():
        for option in cls.OPTIONS:
            table.setdefault(option.name, []).append((name, option))
    return table


ALL_OPTIONS = tuple(all_options())
TUNED = "tuned"   # the spacing that means the model's own timesteps (`ddpmrt tune`)


def make_sampler(name: str, schedule: NoiseSchedule, steps: int | None = None, tuned=None, **options) -> Sampler:
    """The sampler `name` with `steps` and the options it takes; an option left out or None gets the
    commands' default (the class's, except that x̂₀ is not clipped: clip_sample=1.0 asks for it).  With
    `timesteps`, `steps` may be left out; no spacing default is applied then.

    spacing="tuned": the timesteps `ddpmrt tune` made for this sampler setting and step count, from
    `tuned` (the model's artifacts.schedules.TunedSchedules); none there is one line naming the command."""
    cls = sampler_class(name)
    given = {key: value for key, value in options.items() if value is not None}
    if given.get("spacing") == TUNED:
        del given["spacing"]
        if "timesteps" in given:
            raise UserError("give timesteps or a spacing, not both: explicit timesteps replace the spacing")
        given["timesteps"] = tuned_timesteps(cls, schedule, steps, tuned, given)
    settings = dict(given)
    for option in cls.OPTIONS:
        if option.name not in given and not (option.name == "spacing" and "timesteps" in given):
            settings[option.name] = option.for_commands
    # None is "the class's default" except for a nullable option, where it is a value (clip_sample: no clipping).
    nullable = {option.name for option in cls.OPTIONS if option.nullable}
    settings = {key: value for key, value in settings.items() if value is not None or key in nullable}
    return cls(schedule, num_steps=steps, **settings)


def tuned_timesteps(cls: type[Sampler], schedule: NoiseSchedule, steps: int | None, tuned, given: dict) -> list[int]:
    """The tuned timesteps of this setting and step count, or a UserError naming the `ddpmrt tune` that makes them."""
    steps = cls.STEPS if steps is None else steps
    probe = make_sampler(cls.NAME, schedule, steps, **given)      # the full setting, with the commands' defaults
    found = None if tuned is None else tuned.lookup(probe.config, probe.num_steps)
    if found is None:
        model = "MODEL" if tuned is None else tuned.name
        flags = "".join(f" --{k.replace('_', '-')} {_flag_value(v)}" for k, v in sorted(given.items()))
        raise UserError(f"no tuned timesteps for {cls.NAME} at {steps} steps{' in ' + model if tuned else ''}; "
                        f"make them with: ddpmrt tune {model} --sampler {cls.NAME}{flags} --calls {steps}")
    return found


def _flag_value(value) -> str:
    """A value as its command-line flag takes it."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler setting as reports and benchmarks name it: `NAME:STEPS[:VALUE...][:KEY=VALUE...]`.

    Positional values fill the sampler's options in their declared order (ddim:50:1 is η = 1,
    dpmsolver:10:3 order 3, unipc:8:3:bh1 order 3, variant bh1).  A list value is written with commas
    or slashes (ddim:5:timesteps=999,750,500,250,0).  `options` holds only what the spec gave."""

    name: str
    steps: int | None
    options: tuple = field(default=())   # sorted (key, value) pairs

    def make(self, schedule: NoiseSchedule, tuned=None, **overrides) -> Sampler:
        return make_sampler(self.name, schedule, self.steps, tuned=tuned, **{**dict(self.options), **overrides})

    @property
    def family(self) -> str:
        """The sampler and its options without the steps: one line in a plot of quality against calls."""
        cls, given = SAMPLER_CLASSES[self.name], dict(self.options)
        value = {option.name: given.get(option.name, option.for_commands) for option in cls.OPTIONS}
        if self.name == "ddim":
            text = f"DDIM η={value['eta']:g}"
        elif self.name == "ddpm":
            text = "DDPM" + (" fixed_large" if value["variance"] == "fixed_large" else "")
        elif self.name == "dpmsolver":
            text = f"DPM-Solver++({value['order']}M)" + (" heun" if value["solver_type"] == "heun" else "")
        elif self.name == "ipndm":
            text = f"iPNDM-{value['order']}"
        else:
            text = f"UniPC-{value['order']}" + (f" {given['variant']}" if "variant" in given else "") + \
                ("" if value["corrector"] else " no corrector")
        spacing = f" {given['spacing']}" if "spacing" in given else ""
        clip = "" if "clip_sample" not in given else " unclipped" if not given["clip_sample"] else \
            f" clip ±{given['clip_sample']:g}"
        return text + spacing + (" timesteps" if value["timesteps"] is not None else "") + clip

    def with_option(self, key: str, value) -> "SamplerSpec":
        """The same setting with one more option (one the spec names itself is kept)."""
        given = dict(self.options)
        given.setdefault(key, value)
        return SamplerSpec(self.name, self.steps, tuple(sorted(given.items())))

    @property
    def label(self) -> str:
        return f"{self.family}, {self.steps} steps"


def parse_spec(text: str) -> SamplerSpec:
    """One spec, checked against the sampler's declarations (a bad one is one line naming the form)."""
    parts = text.strip().split(":")
    cls = SAMPLER_CLASSES.get(parts[0])
    form = f"NAME:STEPS[:VALUE...][:KEY=VALUE...] with NAME one of {', '.join(SAMPLERS)}, e.g. dpmsolver:10:order=3"
    if cls is None or len(parts) < 2:
        raise UserError(f"sampler spec {shown(text)} not understood; use {form}")
    try:
        steps = int(parts[1]) if parts[1] else None
    except ValueError:
        raise UserError(f"sampler spec {shown(text)} not understood (the steps must be an integer); "
                        f"use {form}") from None
    declared = {option.name: option for option in cls.OPTIONS}
    positional = [option for option in cls.OPTIONS if option.name not in ("spacing", "clip_sample", "timesteps")]
    given = {}
    for index, part in enumerate(parts[2:]):
        if "=" in part:
            key, value = part.split("=", 1)
            key = key.strip().replace("-", "_")
            if key == "spacing" and value == TUNED:
                given["spacing"] = TUNED  # the model's tuned timesteps (make_sampler looks them up)
                continue
            if key not in declared:
                raise UserError(f"sampler spec {shown(text)}: {cls.NAME} takes no {key}; "
                                f"its options are {', '.join(declared)}")
            option = declared[key]
        elif index < len(positional):
            option, value = positional[index], part
        else:
            raise UserError(f"sampler spec {shown(text)}: too many values; name them, e.g. {cls.NAME}:10:"
                            f"{positional[0].name}=...")
        given[option.name] = option.from_text(value)
    return SamplerSpec(cls.NAME, steps, tuple(sorted(given.items())))


def parse_specs(text: str) -> list[SamplerSpec]:
    """A comma-separated list of specs; a list value's commas stay with its spec (a new spec starts with a
    sampler's name)."""
    items: list[str] = []
    for piece in text.split(","):
        if items and piece.strip().split(":")[0] not in SAMPLER_CLASSES:
            items[-1] += "," + piece
        else:
            items.append(piece)
    return [parse_spec(item) for item in items if item.strip()]
