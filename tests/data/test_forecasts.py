"""Forecast stores (simvp_ray.data.forecasts) and the training climatology, without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from simvp_ray.data import DatasetError, open_dataset, validate_store, write_synthetic
from simvp_ray.data.climatology import split_stats, train_climatology
from simvp_ray.data.forecasts import (
    ForecastLayout,
    create_forecast_store,
    init_indices,
    is_forecast_store,
    lead_channel_names,
    open_forecasts,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return open_dataset(write_synthetic(tmp_path_factory.mktemp("src") / "s.zarr",
                                        n_frames=300, seed=1).url)


def layout(source, first: str = "2000-01-03T00", last: str = "2000-01-05T00",
           sha: str = "abc") -> ForecastLayout:
    inputs = np.arange(4)
    steps = init_indices(source, first, last, inputs)
    request = {"checkpoint": "ck", "checkpoint_sha256": sha, "config": {"model": {"x": 1}},
               "source": source.url, "channels": source.channels, "init_start": first,
               "init_end": last, "every": 1}
    return ForecastLayout(source, steps, np.arange(1, 4), source.channels, request)


def fill(store, value: float = 1.0) -> None:
    for chunk in store.pending():
        a, b = store.chunk_range(chunk)
        forecasts = np.full((b - a, 3, 2, 32, 32), value, np.float32)
        forecasts[:, :, 1] += np.arange(3)[None, :, None, None]  # lead l -> value + l
        store.write_chunk(chunk, forecasts, np.ones(b - a, bool))


def test_a_finished_forecast_store_passes_validate_and_reads_back_5d(source, tmp_path):
    url = str(tmp_path / "f.zarr")
    store = create_forecast_store(url, layout(source))
    assert store.num_init == 49 and store.chunk_frames == 32 and store.pending() == [0, 1]
    fill(store)
    store.finish()
    assert "converter simvp_ray.predict" in validate_store(url)
    forecasts = open_forecasts(url)
    assert forecasts.dataset.channels == lead_channel_names(["blobs_0", "blobs_1"], 3)
    assert forecasts.dataset.channels[:3] == ["blobs_0_lead1", "blobs_1_lead1", "blobs_0_lead2"]
    assert forecasts.lead.tolist() == [3600, 7200, 10800]
    assert str(forecasts.dataset.time[0]) == "2000-01-03T00:00:00"
    block = forecasts.forecast_array(3, 5)
    assert block.shape == (2, 3, 2, 32, 32)
    assert np.all(block[:, :, 0] == 1.0) and np.all(block[:, 2, 1] == 3.0)
    assert forecasts.dataset.stats.offset.tolist() == np.tile(source.stats.offset, 3).tolist()
    assert is_forecast_store(url) and not is_forecast_store(source.url)


def test_same_request_resumes_other_request_is_refused_unless_overwrite(source, tmp_path):
    url = str(tmp_path / "f.zarr")
    store = create_forecast_store(url, layout(source))
    a, b = store.chunk_range(1)
    store.write_chunk(1, np.zeros((b - a, 3, 2, 32, 32), np.float32), np.ones(b - a, bool))
    with pytest.raises(DatasetError, match="chunks \\[0\\] are not written"):
        store.finish()
    with pytest.raises(DatasetError, match="incomplete store"):
        validate_store(url)
    assert create_forecast_store(url, layout(source)).pending() == [0]  # resumes
    with pytest.raises(DatasetError, match=r"already holds forecasts of checkpoint ck .*"
                                           r"differs in \['checkpoint_sha256'\].*--overwrite"):
        create_forecast_store(url, layout(source, sha="other"))
    assert create_forecast_store(url, layout(source, sha="other"), overwrite=True
                                 ).pending() == [0, 1]


def test_a_store_that_is_no_forecast_store_is_never_replaced_silently(source, tmp_path):
    with pytest.raises(DatasetError, match="not a forecast store.*--overwrite"):
        create_forecast_store(source.url, layout(source))
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="exists and is not a Zarr store"):
        create_forecast_store(str(folder), layout(source))
    assert (folder / "a.txt").read_text() == "keep me"
    with pytest.raises(DatasetError, match="not a forecast store"):
        open_forecasts(source.url)


@pytest.mark.parametrize("first, last, message", [
    ("1999-12-01", "2000-01-02", "outside the data: forecasts can be initialised from "
                                 "2000-01-01T03:00:00"),
    ("2000-01-02", "2000-03-01", "outside the data"),
    ("2000-01-05", "2000-01-02", "empty"),
    ("yesterday", "2000-01-02", "expected an ISO date"),
])
def test_time_ranges_outside_the_data_are_clear_errors(source, first, last, message):
    with pytest.raises(DatasetError, match=message):
        init_indices(source, first, last, np.arange(4))


def test_init_indices_every_k_steps(source):
    steps = init_indices(source, "2000-01-02T00", "2000-01-02T10", np.arange(4), every=5)
    assert source.time[steps].astype(str).tolist() == [
        "2000-01-02T00:00:00", "2000-01-02T05:00:00", "2000-01-02T10:00:00"]


def test_climatology_is_the_mean_of_the_valid_training_frames(source):
    a, b = source.splits["train"]
    frames = source.frames[a:b][source.valid[a:b]]
    np.testing.assert_allclose(train_climatology(source), frames.mean(axis=0, dtype=np.float64),
                               rtol=1e-10)
    np.testing.assert_allclose(train_climatology(source, ["blobs_1"])[0],
                               frames[:, 1].mean(axis=0, dtype=np.float64), rtol=1e-10)


def test_split_statistics_are_the_population_z_score_of_the_valid_frames(source):
    a, b = source.splits["val"]
    frames = source.frames[a:b][source.valid[a:b]][:, ::-1].astype(np.float64)  # named order
    stats = split_stats(source, "val", ["blobs_1", "blobs_0"])
    assert (stats.kind, stats.fitted_on) == ("zscore", "val")
    np.testing.assert_allclose(stats.offset, frames.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(stats.scale, frames.std(axis=(0, 2, 3)), rtol=1e-8)
