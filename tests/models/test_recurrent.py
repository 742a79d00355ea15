"""Recurrent models: every registered method builds from OpenSTL configs, forecasts the right
shape, trains every used parameter, round-trips its state dict, and rejects what cannot run."""

from __future__ import annotations

import pytest
import torch

from simvp_ray.models import from_openstl, to_openstl_state_dict
from simvp_ray.models.recurrent import RECURRENT_MODELS
from simvp_ray.models.recurrent.common import mask_from_flags, parse_configs

MINE = ("convlstm", "predrnn", "predrnnv2", "predrnnpp")


def tiny(method: str, **changes) -> dict:
    configs = {"method": method, "in_shape": [3, 1, 8, 8], "pre_seq_length": 3,
               "aft_seq_length": 2, "total_length": 5, "patch_size": 2, "num_hidden": "4,4",
               "filter_size": 3, "stride": 1, "layer_norm": 0, "reverse_scheduled_sampling": 0}
    return {**configs, **changes}


@pytest.mark.parametrize("method", MINE)
@pytest.mark.parametrize("rss", [0, 1])
def test_shapes_gradients_and_round_trip(method, rss):
    torch.manual_seed(0)
    configs = tiny(method, reverse_scheduled_sampling=rss)
    model = from_openstl(configs)
    x, y = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 2, 1, 8, 8)
    spec = parse_configs(configs, method)
    mask = mask_from_flags(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])[:, :spec.mask_length],
                           spec)
    loss = model.train().training_loss(x, y, mask)
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in unused)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        pred = model.eval()(x)
    assert pred.shape == (2, 2, 1, 8, 8)
    copy = from_openstl(configs, to_openstl_state_dict(model)).eval()
    with torch.no_grad():
        assert torch.equal(copy(x), pred)


@pytest.mark.parametrize("changes, message", [
    ({"method": "predrnnpp", "num_hidden": "4"}, "predrnnpp needs >= 2 layers"),
    ({"method": "predrnnpp", "layer_norm": 1}, "cannot run with layer_norm=1"),
    ({"method": "predrnn", "num_hidden": "4,8"}, "equal layer widths"),
    ({"method": "predrnnv2", "num_hidden": "4,8"}, "equal layer widths"),
    ({"patch_size": 3}, "not divisible by patch_size=3"),
    ({"stride": 2}, "stride must be 1"),
    ({"aft_seq_length": 0, "total_length": 3}, "must be >= 1"),
    ({"total_length": 7}, "total_length 7 != pre_seq_length"),
    ({"num_hidden": "4,x"}, "comma-separated integers"),
    ({"method": "lstm"}, "unknown OpenSTL method 'lstm'"),
])
def test_configs_a_method_cannot_run_are_rejected(changes, message):
    configs = {**tiny("convlstm"), **changes}
    with pytest.raises(ValueError, match=message):
        from_openstl(configs)


def test_missing_config_keys_and_wrong_mask_are_named():
    configs = tiny("convlstm")
    del configs["filter_size"]
    with pytest.raises(ValueError, match="lack \\['filter_size'\\]"):
        from_openstl(configs)
    model = from_openstl(tiny("convlstm"))
    with pytest.raises(ValueError, match="mask_true must have shape"):
        model.training_loss(torch.rand(2, 3, 1, 8, 8), torch.rand(2, 2, 1, 8, 8),
                            torch.zeros(2, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="expected input of shape"):
        model(torch.rand(2, 4, 1, 8, 8))


def test_registry_holds_the_methods():
    assert set(MINE) <= set(RECURRENT_MODELS)


def test_predrnnv2_is_predrnn_plus_a_training_only_decoupling_term():
    """spec/rnn.md 3.4: the same cells; the adapter only enters the training loss."""
    torch.manual_seed(0)
    v2 = from_openstl(tiny("predrnnv2", decouple_beta=0.5))
    state = {k: v for k, v in v2.state_dict().items() if k != "adapter.weight"}
    v1 = from_openstl(tiny("predrnn"), state)
    x, y = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 2, 1, 8, 8)
    spec = parse_configs(tiny("predrnn"), "predrnn")
    mask = mask_from_flags(torch.tensor([[1.0], [0.0]]), spec)
    with torch.no_grad():
        assert torch.equal(v2.eval()(x), v1.eval()(x))
        term = (v2.training_loss(x, y, mask) - v1.training_loss(x, y, mask)) / 0.5
        assert 0 < term.item() <= 1  # a mean |cosine|
        no_beta = from_openstl(tiny("predrnnv2", decouple_beta=0.0), v2.state_dict())
        assert no_beta.training_loss(x, y, mask) == v1.training_loss(x, y, mask)


def test_profile_times_a_recurrent_model():
    from simvp_ray.config import ModelConfig, RecurrentConfig
    from simvp_ray.models import profile

    config = ModelConfig(method="convlstm", in_frames=3, out_frames=2, channels=1, height=8,
                         width=8, recurrent=RecurrentConfig(num_hidden=(4, 4), filter_size=3,
                                                            patch_size=2))
    cost = profile(config, device="cpu", batch_size=2, iters=1, warmup=0)
    assert cost["params"] > 0 and cost["flops"] > 0
    assert cost["forward_samples_per_s"] > 0 and cost["train_samples_per_s"] > 0
