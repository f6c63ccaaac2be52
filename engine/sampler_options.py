"""A sampler's options, declared once.

Each sampler class lists its options as `Option`s (samplers.py, solvers.py): name, default, check and
help.  Everything else reads those declarations: the class's constructor and `config`, the factory
of every command (sampler_factory.make_sampler), the command line's flags (`ddpmrt sample --eta`),
a request body of `ddpmrt serve` and a report's sampler spec (`dpmsolver:10:order=3`).  Adding an
option to a sampler is one `Option` in its class and the code that uses it.

`check` takes a Python or JSON value and returns it checked and normalised, or raises a one-line
UserError; `parse` turns the text of a flag or a spec into such a value first (text it cannot read
is passed on as it is, for `check` to refuse with its rule).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

from ddpmrt.engine.checks import shown
from ddpmrt.engine.errors import UserError

# The rule of explicit timesteps, stated one way by the samplers, the command line and the server.
TIMESTEPS_RULE = ("timesteps must be strictly decreasing integers in [0, T - 1] (T: the model's training "
                  "timesteps), one per step")
_MISSING = object()


@dataclass(frozen=True)
class Option:
    """One sampler option: its name (a keyword of the class), default, check and help."""

    name: str
    default: Any
    help: str
    check: Callable[[Any], Any]
    parse: Callable[[str], Any] = str           # the text of a flag or a spec -> a value for `check`
    command_default: Any = _MISSING             # what the commands use, where it differs from the class's default
    metavar: str | None = None
    many: bool = False                          # a list of values (a JSON array in a request)
    nullable: bool = False                      # None given to a class is a value (clip_sample: no clipping)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def for_commands(self) -> Any:
        return self.default if self.command_default is _MISSING else self.command_default

    def from_text(self, text: str) -> Any:
        return self.check(self.parse(text))


def resolve(options: tuple[Option, ...], given: dict, owner: str) -> dict:
    """Every declared option's checked value: `given` where present, else the default (None is the default,
    except for a nullable option, where it is a value).

    An option the owner does not declare is one line naming the ones it does."""
    declared = {option.name: option for option in options}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        deterministic = " (it is deterministic: no noise, no η)" if {"eta", "variance", "noise", "generator"} & set(unknown) \
            and "eta" not in declared else ""
        raise UserError(f"the {owner} sampler takes no {', '.join(unknown)}{deterministic}; "
                        f"its options are {', '.join(declared)}")
    values = {}
    for name, option in declared.items():
        value = given.get(name)
        values[name] = option.check(value) if value is not None or (name in given and option.nullable) \
            else option.default
    return values


# ---- checks, each with the rule it enforces in its error --------------------------------------------------

def real(name: str, low: float, high: float) -> Callable[[Any], float]:
    def check(value) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                or not low <= value <= high:
            raise UserError(f"{name} must be a number in [{low:g}, {high:g}], got {shown(value)}")
        return float(value)
    return check


def integer(name: str, low: int, high: int) -> Callable[[Any], int]:
    def check(value) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
            raise UserError(f"{name} must be an integer from {low} to {high}, got {shown(value)}")
        return int(value)
    return check


def choice(name: str, choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value) -> str:
        if value not in choices:
            raise UserError(f"unknown {name} {shown(value)}; choose one of {', '.join(choices)}")
        return value
    return check


def switch(name: str) -> Callable[[Any], bool]:
    """true or false (on or off on the command line and in specs: as_switch)."""
    def check(value) -> bool:
        if not isinstance(value, bool):
            raise UserError(f"{name} must be true or false (on or off), got {shown(value)}")
        return value
    return check


def integers(name: str, rule: str) -> Callable[[Any], tuple[int, ...]]:
    """A list of integers (the sampler checks its range); anything else is one line stating `rule`."""
    def check(value) -> tuple[int, ...]:
        try:
            items = list(value)
        except TypeError:
            items = None
        if isinstance(value, (str, bytes)) or items is None or not all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
            raise UserError(f"{name}: {rule}, got {shown(value)}")
        return tuple(int(v) for v in items)
    return check


# ---- text of a flag or a spec -> a value ------------------------------------------------------------------

def as_number(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def as_int(text: str):
    try:
        return int(text)
    except ValueError:
        return text


def as_switch(text: str):
    return {"on": True, "true": True, "off": False, "false": False}.get(text.strip().lower(), text)


def as_ints(text: str):
    """'999,760,500', or with / between the numbers (as inside a comma-separated list of specs)."""
    try:
        return [int(item) for item in text.replace("/", ",").split(",") if item.strip()]
    except ValueError:
        return text


def clip_option(default: float | None) -> Option:
    """x̂₀'s clip value; 0 or None turns clipping off.

    The commands do not clip (command_default None, which make_sampler passes on: None is "off" here), whatever a
    class's diffusers default.  Measured on both shipped models (benchmarks/results/cpu-clipping-*), only no
    clipping keeps DDIM from getting worse with more steps; clipping at every step drifts (DDIM-1000 FID 27-36
    against 4-12 unclipped); DDPM scores the same either way (within 0.1 FID at 100 and 1000 steps)."""
    check_value = real("clip_sample", 0.0, 100.0)
    return Option("clip_sample", default,
                  "clip x̂₀ to ±C at every step, as diffusers' clip_sample (default: no clipping; 0 also turns it off)",
                  check=lambda value: None if value is None else check_value(value) or None, parse=as_number,
                  command_default=None, metavar="C", nullable=True)


TIMESTEPS = Option("timesteps", None, "explicit descending timesteps used instead of a spacing (as diffusers' "
                   "timesteps=), e.g. 999,760,500,250,0; their count is the number of steps",
                   check=integers("timesteps", TIMESTEPS_RULE), parse=as_ints, metavar="T1,T2,...", many=True)
