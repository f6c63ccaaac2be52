"""Timesteps tuned for one model: where a few network calls should go so that a sampler's outputs
match those of a many-step teacher from the same starting noise.

    from ddpmrt.engine import tune_timesteps
    timesteps = tune_timesteps(model, model.schedule, "dpmsolver", calls=8, shape=(32, *model.image_shape), order=3)
    images = make_sampler("dpmsolver", model.schedule, order=3, timesteps=timesteps).sample(model, ...)

Only network calls of the model are used (any backend; `model(x_t, t) -> ε`), in two stages:

1. The teacher (DPM-Solver++(3M), 200 steps unless told) runs once from N seeded noises and keeps
   its state x and output ε at each of its timesteps.  From those, the cost of one first-order step
   from any teacher timestep to any later one is the distance of where it lands to where the teacher
   is there, with no further network call; dynamic programming over that cost matrix gives the
   path of `calls` steps with the least total cost (GITS, Chen et al., ICML 2024).
2. That path (or the sampler's own spacing, whichever is closer) is refined on the true objective —
   the distance of the student's final images to the teacher's, every step of the student's own
   solver included — by coordinate descent over the integer timesteps with step sizes 32, 16, 8, 4,
   2, 1 (each trial one run of the student: `calls` network calls on N images).

The distance is the mean over the images of each one's RMS distance to the teacher's, leaving out
the quarter farthest from it.  A few images that turn into another digit on the way (a flip of
mode; an FID does not see it) would otherwise decide the schedule: with the RMS over all images,
the schedules tuned on 32 noises were further from the teacher than the standard spacing on 64
others, though closer on most images (DPM-Solver++(3M), 8 calls, digits: 0.062 against 0.043;
the median image 0.033 against 0.039).  The same distance on N noises not tuned on is recorded
beside it (`heldout`, `heldout_baseline`): what a user's own noise will get.

The first timestep stays the teacher's first (T − 1 with its linspace spacing): the student starts
from the same x_T.  Deterministic for a seed.  DDPM and DDIM with η > 0 are stochastic: nothing to
match, so they are refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ddpmrt.engine.checks import sample_shape, shown
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.philox import STREAM_INITIAL, gaussian_noise
from ddpmrt.engine.sampler_factory import make_sampler, parse_spec
from ddpmrt.engine.samplers import History
from ddpmrt.engine.schedule import NoiseSchedule

DEFAULT_TEACHER = "dpmsolver:200:order=3"
DEFAULT_TRAJECTORIES = 32
STEP_SIZES = (32, 16, 8, 4, 2, 1)   # coordinate descent's moves, coarse to fine (in timesteps)
KEPT = 0.75                         # the share of images, closest to the teacher's, that the distance averages


@dataclass
class TunedSchedule:
    """One tuned entry: what it is for, what it reached, and what it cost."""

    sampler: str
    options: dict            # every option of the sampler but its timesteps and spacing
    calls: int
    timesteps: list[int]
    objective: float         # distance to the teacher's images (Tuner.distance), tuned
    baseline: float          # the same for the sampler's default spacing at this many calls
    heldout: float           # the tuned timesteps' distance on as many noises not tuned on
    heldout_baseline: float  # the default spacing's there
    network_calls: int       # batched calls of the model this entry cost (the teacher's are the Tuner's)
    seconds: float
    teacher: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Tuner:
    """The teacher's run, shared by every call count tuned for one sampler setting."""

    def __init__(self, model, schedule: NoiseSchedule, sampler: str = "dpmsolver", shape=None, seed: int = 0,
                 teacher: str = DEFAULT_TEACHER, progress: bool = False, **options):
        self.model, self.schedule, self.progress, self.seed = model, schedule, progress, seed
        self.n, self.image_shape = sample_shape(shape if shape is not None else
                                                (DEFAULT_TRAJECTORIES, *getattr(model, "image_shape", ())),
                                                getattr(model, "image_shape", None))
        self.name, self.options = sampler, {k: v for k, v in options.items() if v is not None}
        if "timesteps" in self.options or "spacing" in self.options:
            raise UserError("tune chooses the timesteps itself: leave out timesteps and spacing")
        student = make_sampler(sampler, schedule, None, **self.options)  # its config at the default steps
        if student.coefficients[:, 5].any() or sampler == "ddpm":
            raise UserError(f"tune needs a deterministic sampler (ddim with eta 0, dpmsolver, unipc, ipndm), not {sampler}"
                            + (" with eta > 0" if sampler == "ddim" else ""))
        # The setting tuned for (what a lookup matches): every option but the steps' placement.
        self.config = {k: v for k, v in student.config.items() if k not in ("sampler", "num_steps", "timesteps", "spacing")}
        spec = parse_spec(teacher)
        self.teacher_spec = teacher
        # The teacher clips as the student does: both are judged on the same images.
        self.teacher = spec.make(schedule, clip_sample=student.clip_sample or 0.0)
        self.network_calls, self._cost = 0, None
        start = time.perf_counter()
        self._run_teacher()
        self.teacher_seconds = time.perf_counter() - start

    def _call(self, x: np.ndarray, t: int) -> np.ndarray:
        self.network_calls += 1
        eps = np.asarray(self.model(x, np.full(len(x), t, np.int64)), np.float32)
        if not np.isfinite(eps).all():
            raise UserError(f"the model returned NaN or Inf at t = {t} during tuning; try the fp32 model")
        return eps

    def _run_teacher(self) -> None:
        """The teacher's states x and outputs ε at each of its timesteps, and its final images."""
        teacher = self.teacher
        x = gaussian_noise(self.seed, np.arange(self.n), 0, STREAM_INITIAL, self.image_shape)
        states, outputs, history = [], [], History()
        for i in tqdm(range(teacher.num_steps), desc="teacher", disable=not self.progress, leave=False):
            eps = self._call(x, int(teacher.timesteps[i]))
            states.append(x.reshape(self.n, -1))
            outputs.append(eps.reshape(self.n, -1))
            x = teacher.step(x, eps, i, None, history)
        self.grid = teacher.timesteps.astype(np.int64)
        self.states, self.outputs = np.stack(states), np.stack(outputs)   # (K, N, D)
        self.target = x.reshape(self.n, -1)
        # The noises after these (image indices N..2N−1 of the same seed): only the teacher's images are kept.
        self.heldout_indices = np.arange(self.n, 2 * self.n)
        self.heldout_target = self._images(teacher, self.heldout_indices)
        self.teacher_calls = self.network_calls

    # -- the objective -------------------------------------------------------------------------------

    @staticmethod
    def distance(images: np.ndarray, target: np.ndarray) -> float:
        """The mean of each image's RMS distance to its teacher image, over the KEPT share closest to it."""
        each = np.sqrt(np.mean((images.reshape(len(target), -1) - target) ** 2, axis=1))
        return float(np.sort(each)[:max(1, round(KEPT * len(each)))].mean())

    def objective(self, timesteps, heldout: bool = False) -> float:
        """The distance of the student's images (these timesteps, the same noise) to the teacher's."""
        sampler = make_sampler(self.name, self.schedule, timesteps=list(map(int, timesteps)), **self.options)
        images = self._images(sampler, self.heldout_indices if heldout else np.arange(self.n))
        return self.distance(images, self.heldout_target if heldout else self.target)

    def _images(self, sampler, indices: np.ndarray) -> np.ndarray:
        """The sampler's images from the starting noises `indices` of the seed (on the model's own loop: a GPU
        model's device loop), flattened; NaN or Inf is one line."""
        self.network_calls += sampler.num_steps
        images = sampler.sample(self.model, (self.n, *self.image_shape), seed=self.seed, image_indices=indices,
                                progress=False)
        if not np.isfinite(images).all():
            raise UserError("the model's images hold NaN or Inf during tuning; try the fp32 model")
        return images.reshape(self.n, -1)

    # -- stage 1: dynamic programming over the teacher's cost matrix -----------------------------------

    def cost_matrix(self) -> np.ndarray:
        """cost[i, j]: squared distance after one first-order step from teacher timestep i to j (j = K: the end)."""
        abar = self.schedule.alphas_cumprod[self.grid]
        K = len(self.grid)
        clip = self.teacher.clip_sample
        cost = np.full((K, K + 1), np.inf)
        ends = np.concatenate([self.states[1:], self.target[None]])          # where the teacher is at 1..K
        a_end = np.append(np.sqrt(abar), 1.0)
        s_end = np.append(np.sqrt(1 - abar), 0.0)
        for i in range(K):
            x0 = (self.states[i] - np.sqrt(1 - abar[i]) * self.outputs[i]) / np.sqrt(abar[i])
            if clip is not None:
                x0 = np.clip(x0, -clip, clip)
            for j in range(i + 1, K + 1):
                landed = a_end[j] * x0 + s_end[j] * self.outputs[i]
                cost[i, j] = np.mean((landed - ends[j - 1]) ** 2)
        return cost

    def shortest_path(self, cost: np.ndarray, calls: int) -> np.ndarray:
        """The `calls` teacher timesteps, starting at the first, of the path to the end with the least cost."""
        K = len(self.grid)
        best = np.full((calls + 1, K + 1), np.inf)
        came = np.zeros((calls + 1, K + 1), np.int64)
        best[0, 0] = 0.0
        for c in range(1, calls + 1):
            # best[c, j] = min_i best[c − 1, i] + cost[i, j]
            total = best[c - 1, :K, None] + cost
            came[c] = np.argmin(total, axis=0)
            best[c] = total[came[c], np.arange(K + 1)]
        nodes, j = [], K
        for c in range(calls, 0, -1):
            j = came[c, j]
            nodes.append(j)
        return self.grid[np.array(nodes[::-1])]

    # -- stage 2: coordinate descent on the true objective ---------------------------------------------

    def check_calls(self, calls: int) -> int:
        """2 to the teacher's steps, and at least the sampler's order: one line otherwise."""
        low, high = max(2, self.config.get("order", 1)), self.teacher.num_steps
        if isinstance(calls, bool) or not isinstance(calls, (int, np.integer)) or not low <= calls <= high:
            raise UserError(f"cannot tune for {shown(calls)} calls: from {low} (two, and the sampler's order) to the "
                            f"teacher's {high} steps")
        return int(calls)

    def tune(self, calls: int) -> TunedSchedule:
        T = self.schedule.num_train_timesteps
        calls = self.check_calls(calls)
        start, spent = time.perf_counter(), self.network_calls
        standard = make_sampler(self.name, self.schedule, calls, **self.options).timesteps
        first = int(self.grid[0])
        if self._cost is None:  # computed once, for every call count
            self._cost = self.cost_matrix()
        candidates = [self.shortest_path(self._cost, calls)]
        if standard[0] == first:
            candidates.append(standard)
        scored = [(self.objective(ts), list(map(int, ts))) for ts in candidates]
        baseline = scored[-1][0] if standard[0] == first else self.objective(standard)
        value, best = min(scored)
        bar = tqdm(total=len(STEP_SIZES) * 2 * max(0, calls - 1), desc=f"tune {calls} calls",
                   disable=not self.progress, leave=False)
        for size in STEP_SIZES:
            for i in range(1, calls):
                for move in (-size, size):
                    bar.update()
                    trial = list(best)
                    trial[i] += move
                    upper = trial[i - 1] - 1
                    lower = trial[i + 1] + 1 if i + 1 < calls else 0
                    if not lower <= trial[i] <= upper or trial[i] > T - 1:
                        continue
                    score = self.objective(trial)
                    if score < value:
                        value, best = score, trial
        bar.close()
        return TunedSchedule(sampler=self.name, options=dict(self.config), calls=calls, timesteps=best,
                             objective=value, baseline=baseline, heldout=self.objective(best, heldout=True),
                             heldout_baseline=self.objective(standard, heldout=True),
                             network_calls=self.network_calls - spent,
                             seconds=time.perf_counter() - start,
                             teacher={"spec": self.teacher_spec, "trajectories": self.n, "seed": self.seed,
                                      "network_calls": self.teacher_calls, "seconds": self.teacher_seconds})


def tune_timesteps(model, schedule: NoiseSchedule, sampler: str = "dpmsolver", calls: int = 8, shape=None,
                   seed: int = 0, teacher: str = DEFAULT_TEACHER, **sampler_options) -> np.ndarray:
    """The `calls` descending timesteps for `sampler` (with `sampler_options`) whose images from `shape`
    seeded noises best match the teacher's; `model(x_t, t) -> ε` is any callable."""
    tuner = Tuner(model, schedule, sampler, shape, seed, teacher, **sampler_options)
    return np.array(tuner.tune(calls).timesteps, np.int64)
