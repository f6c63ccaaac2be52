import pytest

torch = pytest.importorskip("torch")

from ddpmrt.export.model.unet import CONFIGS, UNet, UNetConfig, count_parameters, get_config, timestep_embedding  # noqa: E402


def test_cifar10_config_has_the_papers_parameter_count():
    n = count_parameters(UNet(get_config("cifar10")))
    assert abs(n - 35.7e6) / 35.7e6 < 0.01, n


def test_tiny_is_small():
    assert count_parameters(UNet(get_config("tiny"))) <= 2_000_000


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_shape_and_timestep_dependence(name):
    cfg = get_config(name)
    model = UNet(cfg).eval()
    x = torch.randn(2, cfg.image_channels, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 999]))
        other = model(x, torch.tensor([500, 999]))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert not torch.allclose(out[0], other[0]) and torch.allclose(out[1], other[1], atol=1e-6)


def test_config_round_trips_through_a_dict():
    cfg = get_config("tiny", image_channels=3)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg


def test_half_precision_module_stays_close_to_fp32():
    torch.manual_seed(0)
    model = UNet(get_config("tiny")).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        ref = model(x, t)
        half = model.half()(x.half(), t)
    assert half.dtype == torch.float16
    assert (half.float() - ref).abs().max() < 2e-2


def test_sinusoidal_embedding():
    emb = timestep_embedding(torch.tensor([0, 1]), 8)
    assert emb.shape == (2, 8)
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert emb[1, 0] == pytest.approx(torch.sin(torch.tensor(1.0)).item())


def test_unknown_config_name():
    with pytest.raises(ValueError, match="unknown model config"):
        get_config("huge")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_native_and_export_forms_agree_in_fp32(name):
    torch.manual_seed(1)
    cfg = get_config(name)
    model = UNet(cfg).eval()
    x, t = torch.randn(2, cfg.image_channels, cfg.image_size, cfg.image_size), torch.tensor([3, 700])
    with torch.no_grad():
        exported = model.set_execution_form("export")(x, t)
        native = model.set_execution_form("native")(x, t)
    assert (native - exported).abs().max() < 1e-4 * exported.abs().max()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("form", ["export", "native"])
def test_reduced_precision_forms_stay_close_to_the_fp32_reference(form, dtype):
    # The fp32 reference is the export form in fp32; each form in half precision (channels_last for the
    # native form, as the GPU backends run it) must stay within the half-precision error of it.
    torch.manual_seed(2)
    dtype = getattr(torch, dtype)
    reference_model = UNet(get_config("tiny")).eval()
    model = UNet(get_config("tiny")).eval()
    model.load_state_dict(reference_model.state_dict())
    model = model.set_execution_form(form).to(dtype)
    if form == "native":
        model = model.to(memory_format=torch.channels_last)
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        ref = reference_model(x, t)
        got = model(x.to(dtype), t).float()
    tolerance = 2e-2 if dtype == torch.float16 else 8e-2  # bf16 keeps 8 mantissa bits to fp16's 11
    assert (got - ref).abs().max() < tolerance * max(1.0, ref.abs().max().item())


def test_unknown_execution_form():
    with pytest.raises(ValueError, match="unknown execution form"):
        UNet(get_config("tiny")).set_execution_form("fast")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_precomputed_time_table_gives_the_computed_shifts(name):
    torch.manual_seed(3)
    cfg = get_config(name)
    model = UNet(cfg).eval()
    x, t = torch.randn(3, cfg.image_channels, cfg.image_size, cfg.image_size), torch.tensor([0, 421, 999])
    with torch.no_grad():
        computed = model(x, t)
        model.precompute_time_table(1000)
        looked_up = model(x, t)
    widths = [block.temb_proj.out_features for block in model.modules() if block.__class__.__name__ == "ResBlock"]
    assert model.time_table.shape == (1000, sum(widths))
    assert (looked_up - computed).abs().max() < 1e-5 * computed.abs().max()
    # The table is derived, never saved: a checkpoint written from this module has the same keys.
    assert "time_table" not in model.state_dict()
    assert model.precompute_time_table(None).time_table is None


def test_the_time_table_is_the_models_own_shifts():
    # A table that ignored the weights (or the block order) would still have the right shape:
    # every row must be the shifts the blocks compute for that t, in call order.
    torch.manual_seed(4)
    model = UNet(get_config("tiny")).eval()
    t = torch.tensor([7, 640])
    with torch.no_grad():
        expected = torch.cat(model.time_shifts(t), dim=1)
        model.precompute_time_table(1000)
        rows = torch.cat(model.time_shifts(t), dim=1)
        model.temb[0].weight.mul_(2)  # new weights: the table must be recomputed to see them
        stale = torch.cat(model.time_shifts(t), dim=1)
        fresh = torch.cat(model.precompute_time_table(1000).time_shifts(t), dim=1)
    torch.testing.assert_close(rows, expected, atol=1e-6, rtol=0)
    assert torch.equal(stale, rows) and not torch.allclose(fresh, rows, atol=1e-3)


def test_the_time_table_follows_the_modules_dtype():
    model = UNet(get_config("tiny")).eval().precompute_time_table(1000).to(torch.float16)
    assert model.time_table.dtype == torch.float16
    x = torch.randn(2, 1, 16, 16, dtype=torch.float16)
    with torch.no_grad():
        assert model(x, torch.tensor([1, 2])).dtype == torch.float16


def test_training_ignores_the_time_table():
    # A table is a snapshot of the weights: in training mode the MLP runs, so its weights get gradients.
    model = UNet(get_config("tiny")).precompute_time_table(1000).train()
    model(torch.randn(2, 1, 16, 16), torch.tensor([3, 4])).square().mean().backward()
    assert model.temb[0].weight.grad is not None and model.temb[0].weight.grad.abs().sum() > 0
