"""Training methods: OpenSTL's samplers reproduce its own masks and schedules, the recurrent
methods train through the one loop, and a resumed recurrent run equals an uninterrupted one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import shared_file

from simvp_ray.config import RecurrentConfig, RunConfig, override
from simvp_ray.models import build_model
from simvp_ray.models.recurrent import RECURRENT_MODELS
from simvp_ray.presets import get_preset
from simvp_ray.train.checkpoint import load_checkpoint
from simvp_ray.train.inference import model_from_checkpoint, predict_numpy
from simvp_ray.train.loop import Runtime, run_training
from simvp_ray.train.methods import (
    RecurrentMethod,
    build_method,
    check_method,
    rss_flags,
    rss_probabilities,
    ss_flags,
    ss_step,
    teacher_forcing_ratio,
)

MEASURE = "spec/parity/rnn/mmnist_measure.json"


@pytest.mark.parametrize("name", ["convlstm.pt", "predrnn.pt", "predrnnpp.pt", "mim.pt",
                                  "predrnn_ln_rss.pt"])
def test_samplers_draw_openstls_masks(name):
    """OpenSTL's own sampler made these flags from numpy's RNG seeded np_seed, at step 0."""
    fx = torch.load(shared_file(f"spec/parity/rnn/{name}"), weights_only=True)
    train, configs = fx["train"], fx["configs"]
    rng = np.random.RandomState(train["np_seed"])
    batch = fx["batch_x"].shape[0]
    if configs["reverse_scheduled_sampling"]:
        r_eta, eta = rss_probabilities(train["global_step"], RecurrentConfig())
        flags = rss_flags(rng, batch, configs["pre_seq_length"], configs["aft_seq_length"],
                          r_eta, eta)
    else:
        eta = ss_step(train["eta_in"], train["global_step"], RecurrentConfig())
        assert eta == train["eta_out"]
        flags = ss_flags(rng, batch, configs["aft_seq_length"], eta)
    assert np.array_equal(flags, train["mask_flags"].numpy())


def test_ss_eta_accumulates_like_openstl():
    expected = json.loads(shared_file(MEASURE).read_text())["schedules"]["ss_eta_after_step"]
    eta, after = 1.0, {}
    for step in range(max(map(int, expected)) + 1):
        eta = ss_step(eta, step, RecurrentConfig())
        after[str(step)] = eta
    for step, value in expected.items():
        assert after[step] == value, step  # bit for bit, float error included


def test_rss_probabilities_follow_openstl_formulas():
    for row in json.loads(shared_file(MEASURE).read_text())["schedules"]["rss"]:
        r_eta, eta = rss_probabilities(row["itr"], RecurrentConfig())
        assert r_eta == pytest.approx(row["r_eta_formula"], abs=1e-15)
        assert eta == pytest.approx(row["eta_formula"], abs=1e-15)


def test_phydnet_teacher_forcing_ratio():
    assert [teacher_forcing_ratio(e) for e in (0, 100, 334, 400)] == pytest.approx(
        [1.0, 0.7, 0.0, 0.0])
    assert teacher_forcing_ratio(199) == pytest.approx(0.403)


def rnn_config(method: str = "convlstm", epochs: int = 3, **recurrent) -> RunConfig:
    changes = {"model.method": method, "model.in_frames": 4, "model.out_frames": 4,
               "model.channels": 1, "model.height": 16, "model.width": 16,
               "model.recurrent.num_hidden": "8,8", "model.recurrent.filter_size": 3,
               "model.recurrent.patch_size": 4, "train.epochs": epochs, "data.batch_size": 4,
               "optim.lr": 3e-3}
    changes.update({f"model.recurrent.{k}": v for k, v in recurrent.items()})
    return override(get_preset("demo"), changes)


def test_ss_mask_probability_and_eta_state():
    # a fast ramp: eta 1 - 0.1 (n + 1), 0 from step 5
    method = build_method(rnn_config(sampling_changing_rate=0.1, sampling_stop_iter=5))
    means = [method.mask(4000, step, 0).mean() for step in range(7)]
    assert means == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5, 0.0, 0.0], abs=0.02)
    assert method.state_dict() == {"eta": 0.0}
    rss = build_method(rnn_config(reverse_scheduled_sampling=True))
    assert rss.mask(8, 0, 0).shape == (8, 6)


@pytest.mark.skipif("mau" not in RECURRENT_MODELS, reason="MAU is not registered")
def test_mau_keeps_openstls_stuck_eta_unless_fixed():
    quirky = RecurrentMethod(rnn_config("mau", patch_size=1, sampling_changing_rate=0.1))
    for step in range(3):
        assert quirky.mask(4000, step, 0).mean() == pytest.approx(0.9, abs=0.02)
    fixed = RecurrentMethod(rnn_config("mau", patch_size=1, sampling_changing_rate=0.1,
                                       openstl_quirks=False))
    assert [fixed.mask(4000, s, 0).mean() for s in range(3)] == pytest.approx(
        [0.9, 0.8, 0.7], abs=0.02)


@pytest.mark.parametrize("changes, message", [
    ({"model.method": "lstm"}, "unknown model.method 'lstm'"),
    ({"model.method": "predrnnpp", "model.recurrent.num_hidden": "8"}, ">= 2 layers"),
    ({"model.method": "predrnn", "model.recurrent.num_hidden": "8,16"}, "equal layer widths"),
    ({"model.method": "mau", "model.recurrent.reverse_scheduled_sampling": True},
     "no reverse scheduled sampling"),
    ({"model.out_frames": 0}, "must be >= 1"),
    ({"model.method": "mau", "model.recurrent.patch_size": 4},
     r"model.recurrent.patch_size=4: mau runs on unpatched frames; valid: 1"),
])
def test_configs_a_method_cannot_run_fail_before_training(changes, message):
    with pytest.raises(ValueError, match=message):
        check_method(override(rnn_config(), changes).model)


@pytest.mark.parametrize("changes, extra, message", [
    ({"data.val_batch_size": 8}, {}, r"data.val_batch_size=8 != training batch 4; set"),
    ({"data.batch_size": 8}, {"world_sizes": (1, 2)}, r"!= training batch 8; set"),
    ({}, {"val_windows": 10}, r"the 10 validation windows leave a last batch of 2"),
])
def test_mim_with_a_changing_batch_size_fails_before_training(changes, extra, message):
    config = override(rnn_config("mim"), {"data.val_batch_size": 4, **changes})
    with pytest.raises(ValueError, match=message) as error:
        check_method(config.model, config.data, **extra)
    assert "\n" not in str(error.value) and "openstl_quirks=false" in str(error.value)
    # without the carried state any batch size runs
    fixed = override(config, {"model.recurrent.openstl_quirks": False})
    check_method(fixed.model, fixed.data, **extra)


def test_mim_with_one_batch_size_passes_the_check():
    config = override(rnn_config("mim"), {"data.batch_size": 8, "data.val_batch_size": 4})
    check_method(config.model, config.data, world_sizes=(2,), val_windows=12)  # 8 / 2 = 4


def wave_runtime(tmp_path, reports: list, resume=None, val_batch: int = 8) -> Runtime:
    rng = np.random.default_rng(0)
    phases = rng.uniform(0, 2 * np.pi, size=32)
    grid, t = np.arange(16, dtype=np.float32), np.arange(8, dtype=np.float32)
    frames = np.sin(0.4 * (grid[None, None, None, :] + grid[None, None, :, None])
                    - 1.2 * t[None, :, None, None] + phases[:, None, None, None])
    frames = frames[:, :, None].astype(np.float32)  # (N, 8, 1, 16, 16)

    def train_batches(epoch: int):
        order = np.random.default_rng(100 + epoch).permutation(24)
        for start in range(0, 24, 4):
            index = order[start:start + 4]
            yield {"x": frames[index, :4], "y": frames[index, 4:]}

    def val_batches():
        for start in range(24, 32, val_batch):
            window = frames[start:start + val_batch]
            yield {"x": window[:, :4], "y": window[:, 4:]}

    return Runtime(train_batches=train_batches, val_batches=val_batches, steps_per_epoch=6,
                   checkpoint_dir=tmp_path, report=lambda m, c: reports.append((m, c)),
                   resume=resume, log=lambda line: None)


@pytest.mark.parametrize("method, rss", [("predrnn", False), ("predrnnv2", True),
                                         ("e3dlstm", False)])
def test_recurrent_run_resumes_exactly(tmp_path, method, rss):
    # eta falls 0.05 a step, so masks after a resume differ unless the sampler state is kept
    config = rnn_config(method, epochs=2, sampling_changing_rate=0.05,
                        reverse_scheduled_sampling=rss, r_sampling_step_1=3,
                        r_sampling_step_2=15, r_exp_alpha=4.0)
    straight = []
    run_training(config, wave_runtime(tmp_path / "a", straight))
    assert straight[-1][0]["train/loss"] < straight[0][0]["train/loss"]
    payload = load_checkpoint(straight[0][1])  # as if the run had died after epoch 0
    assert payload.method == {"eta": 1.0 if rss else pytest.approx(1 - 6 * 0.05)}
    resumed = []
    run_training(config, wave_runtime(tmp_path / "b", resumed, resume=payload))
    for key in ("val/mse", "train/loss"):
        assert resumed[-1][0][key] == straight[-1][0][key], key
    # a checkpoint rebuilds the recurrent model for evaluate / predict / visualize, unchanged
    model = model_from_checkpoint(load_checkpoint(resumed[-1][1]))
    forecast = predict_numpy(model, np.zeros((3, 4, 1, 16, 16), np.float32), batch_size=2)
    assert forecast.shape == (3, 4, 1, 16, 16) and np.isfinite(forecast).all()


def test_train_job_rejects_a_config_the_method_cannot_run_before_ray(tmp_path, capsys):
    import ray
    from helpers import load_job

    args = ["--set", "model.method=predrnnpp", "model.recurrent.num_hidden=8",
            "--storage", str(tmp_path), "--name", "bad"]
    was_up = ray.is_initialized()  # a session Ray of earlier tests may be running
    assert load_job("train").main(args) == 2
    assert "predrnnpp needs >= 2 layers" in capsys.readouterr().err
    assert ray.is_initialized() == was_up, "the job started Ray before failing"


@pytest.mark.parametrize("method, recurrent", [
    ("mim", {}), ("e3dlstm", {}), ("mau", {"patch_size": 1, "sr_size": 2, "tau": 2}),
    ("phydnet", {}), ("phydnet", {"openstl_quirks": False})])
def test_each_added_method_trains_through_the_loop(tmp_path, method, recurrent):
    config = override(rnn_config(method, epochs=1, **recurrent), {"data.val_batch_size": 4})
    reports = []
    metrics = run_training(config, wave_runtime(tmp_path, reports, val_batch=4))
    assert np.isfinite(metrics["train/loss"]) and np.isfinite(metrics["val/mse"])
    model = model_from_checkpoint(load_checkpoint(reports[-1][1]))
    forecast = predict_numpy(model, np.zeros((4, 4, 1, 16, 16), np.float32), batch_size=4)
    assert forecast.shape == (4, 4, 1, 16, 16) and np.isfinite(forecast).all()


def test_mim_state_follows_openstl_quirks():
    x, y = torch.rand(4, 4, 1, 16, 16), torch.rand(4, 4, 1, 16, 16)
    for quirks in (True, False):
        config = override(rnn_config("mim", openstl_quirks=quirks), {"data.val_batch_size": 4})
        model = build_model(config.model)
        method = build_method(config)
        method.training_loss(method.wrap(model), x, y, 0, 0)
        carried = [state is not None for state in model.stationary_state()]
        assert model.carry_state is quirks and all(carried)
        # a carried state fits one batch size only; a fresh start each call fits any
        if quirks:
            with pytest.raises(ValueError, match="every batch needs the same size"):
                model(x[:3])
        else:
            assert model(x[:3]).shape == (3, 4, 1, 16, 16)


@pytest.mark.parametrize("quirks", [True, False])
def test_phydnet_teacher_forcing_is_drawn_per_epoch_and_reaches_the_model(quirks):
    config = rnn_config("phydnet", openstl_quirks=quirks)
    torch.manual_seed(0)
    model = build_model(config.model)
    assert model.loss_quirk is quirks
    method = build_method(config)
    assert method.mask(4, 0, 0).shape == ()
    x, y = torch.rand(2, 4, 1, 16, 16), torch.rand(2, 4, 1, 16, 16)
    forced = model.training_loss(x, y, teacher_forcing=True)
    free = model.training_loss(x, y, teacher_forcing=False)
    assert forced != free
    wrapped = method.wrap(model)
    # epoch 0: ratio 1, every batch forced; epoch 400: ratio 0, none
    for step in range(5):
        assert method.training_loss(wrapped, x, y, step, 0) == forced
        assert method.training_loss(wrapped, x, y, step, 400) == free
    draws = [float(method.mask(4, step, 200)) for step in range(400)]
    assert np.mean(draws) == pytest.approx(teacher_forcing_ratio(200), abs=0.08)
