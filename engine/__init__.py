"""ddpmrt.engine: the torch-free diffusion runtime (schedules, samplers, noise, backends).

    from ddpmrt.engine import NoiseSchedule, DDIMSampler, load_model
    model = load_model("digits")
    images = DDIMSampler(model.schedule, num_steps=50).sample(model, (16, *model.image_shape), seed=0)

Importing this package needs only NumPy (plus Pillow and tqdm); backends import their own
libraries when a model is loaded.
"""

from ddpmrt.engine.backends import load_model, shipped_models
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.images import make_grid, save_images, save_png, to_uint8
from ddpmrt.engine.philox import gaussian_noise, philox4x32
from ddpmrt.engine.sampler_factory import make_sampler
from ddpmrt.engine.samplers import DDIMSampler, DDPMSampler, apply_update, make_timesteps
from ddpmrt.engine.schedule import NoiseSchedule
from ddpmrt.engine.solvers import DPMSolverSampler, IPNDMSampler, UniPCSampler
from ddpmrt.engine.tuning import tune_timesteps
from ddpmrt.engine.version import __version__

__all__ = [
    "DDIMSampler", "DDPMSampler", "DPMSolverSampler", "IPNDMSampler", "NoiseSchedule", "UniPCSampler", "UserError",
    "__version__", "apply_update",
    "gaussian_noise", "load_model", "make_grid", "make_sampler", "make_timesteps", "philox4x32", "save_images",
    "save_png", "shipped_models", "to_uint8", "tune_timesteps",
]
