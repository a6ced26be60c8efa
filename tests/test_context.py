"""Through-plane context (2.5D input): the stack builder, training items that stay within their
case, one spatial augmentation for every channel, the config key, and model folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jointseg.config import AugmentationConfig, ConfigError, ModelConfig, config_from_dict
from jointseg.data.augment import build_augmentation
from jointseg.data.cache import CaseRows
from jointseg.data.context import context_rows, context_stack
from jointseg.data.dataset import SliceDataset
from jointseg.models import build_model, load_model, save_model
from jointseg.models.checkpoint import INDEX_FILE


def _volume(slices: int, offset: float = 0.0) -> np.ndarray:
    """[S, 4, 5] whose slice s holds offset + s everywhere (plus a ramp, so slices differ)."""
    ramp = np.arange(20, dtype=np.float32).reshape(4, 5) / 100
    return (offset + np.arange(slices, dtype=np.float32))[:, None, None] + ramp


def test_context_rows_clamp_at_both_ends() -> None:
    np.testing.assert_array_equal(
        context_rows([0, 1, 3, 4], 5, 3), [[0, 0, 1], [0, 1, 2], [2, 3, 4], [3, 4, 4]]
    )
    np.testing.assert_array_equal(
        context_rows([0, 2, 4], 5, 5), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [2, 3, 4, 4, 4]]
    )
    np.testing.assert_array_equal(context_rows([0, 0], 1, 5), np.zeros((2, 5)))
    np.testing.assert_array_equal(context_rows([2, 0], 3, 1), [[2], [0]])


@pytest.mark.parametrize("k", [2, 0, -1])
def test_even_or_non_positive_k_is_refused(k: int) -> None:
    with pytest.raises(ValueError, match="odd"):
        context_rows([0], 5, k)


def test_rows_outside_the_stack_are_refused() -> None:
    with pytest.raises(IndexError):
        context_stack(_volume(3), [3], 3)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_stack_centre_channel_is_the_slice_and_neighbours_are_clamped(k: int) -> None:
    volume = _volume(6)
    rows = np.arange(6)
    stack = context_stack(volume, rows, k)
    assert stack.shape == (6, k, 4, 5) and stack.dtype == np.float32
    np.testing.assert_array_equal(stack[:, k // 2], volume)
    for row in rows:
        for channel in range(k):
            source = min(max(row + channel - k // 2, 0), 5)
            np.testing.assert_array_equal(stack[row, channel], volume[source])


def test_tensor_and_memory_map_give_the_numpy_stack(tmp_path: Path) -> None:
    volume = _volume(7)
    np.save(tmp_path / "v.npy", volume)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    expected = context_stack(volume, [0, 3, 6], 3)
    np.testing.assert_array_equal(context_stack(mapped, [0, 3, 6], 3), expected)
    tensor = context_stack(torch.from_numpy(volume), [0, 3, 6], 3)
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_array_equal(tensor.numpy(), expected)


class _Cache:
    """Two cases of 3 and 4 slices under one row numbering, as in the slice cache."""

    def __init__(self) -> None:
        first, second = _volume(3, offset=0.0), _volume(4, offset=100.0)
        self.images = CaseRows([first, second])
        self.labels = CaseRows(
            [np.full(v.shape, i + 1, np.uint8) for i, v in enumerate((first, second))]
        )


def test_items_never_reach_into_the_neighbouring_case() -> None:
    dataset = SliceDataset([_Cache()], context_slices=3)
    last_of_first = dataset[(0, 2)]["image"].numpy()  # rows 1, 2, 2 of case one
    first_of_second = dataset[(0, 3)]["image"].numpy()  # rows 0, 0, 1 of case two
    assert last_of_first.shape == (3, 4, 5)
    np.testing.assert_array_equal(last_of_first[:, 0, 0], [1, 2, 2])
    np.testing.assert_array_equal(first_of_second[:, 0, 0], [100, 100, 101])
    assert dataset[(0, 3)]["label"].unique().tolist() == [2]  # the centre slice's label
    one = SliceDataset([_Cache()])[(0, 3)]["image"].numpy()
    np.testing.assert_array_equal(one, first_of_second[1:2])


def test_patches_pad_each_channel_with_its_own_minimum() -> None:
    dataset = SliceDataset([_Cache()], patch_size=(6, 6), context_slices=3)
    item = dataset[(0, 4, -1, 0, 0)]
    image = item["image"].numpy()
    assert image.shape == (3, 6, 6) and tuple(item["label"].shape) == (6, 6)
    for channel, value in enumerate((100, 101, 102)):
        np.testing.assert_allclose(image[channel, 0], value)  # padded row: the slice's minimum
        np.testing.assert_allclose(image[channel, 1, :5], _volume(1, value)[0, 0])
    assert item["label"][0].tolist() == [0] * 6 and item["label"][1, :5].tolist() == [2] * 5


def test_plain_arrays_cannot_give_context() -> None:
    class Flat:
        images = _volume(5)
        labels = np.zeros((5, 4, 5), np.uint8)

    assert SliceDataset([Flat()])[(0, 1)]["image"].shape == (1, 4, 5)
    with pytest.raises(TypeError, match="within a case"):
        SliceDataset([Flat()], context_slices=3)[(0, 1)]


def test_augmentation_moves_every_channel_alike() -> None:
    spatial = AugmentationConfig(
        affine_probability=1.0, elastic_probability=1.0, probability=0.0, flip_axes=[0, 1]
    )
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 48, 48, generator=generator)
    label = torch.zeros(1, 48, 48, dtype=torch.uint8)
    label[0, 10:30, 12:40] = 1
    for seed in range(4):
        out = build_augmentation(spatial, seed=seed)({"image": image.clone(), "label": label})
        for channel in range(3):
            alone = build_augmentation(spatial, seed=seed)(
                {"image": image[channel : channel + 1].clone(), "label": label}
            )
            torch.testing.assert_close(
                torch.as_tensor(out["image"][channel]), torch.as_tensor(alone["image"][0])
            )
            assert torch.equal(torch.as_tensor(out["label"]), torch.as_tensor(alone["label"]))
    intensity = AugmentationConfig(
        rotate_degrees=0.0, scale_range=0.0, translate_fraction=0.0, noise_std=0.0,
        probability=1.0,
    )  # fmt: skip
    same = image[:1].repeat(3, 1, 1)
    out = torch.as_tensor(
        build_augmentation(intensity, seed=1)({"image": same, "label": label})["image"]
    )
    assert not torch.equal(out[0], same[0])
    torch.testing.assert_close(out[1], out[0])
    torch.testing.assert_close(out[2], out[0])


def _tiny(**model) -> dict:
    return {"datasets": [{"name": "knee", "folder": "Dataset001_Knee"}], "model": model}


def test_config_takes_odd_k_and_refuses_even_k() -> None:
    assert config_from_dict(_tiny()).model.context_slices == 1
    assert config_from_dict(_tiny(context_slices=5)).model.context_slices == 5
    with pytest.raises(ConfigError, match=r"model\.context_slices.*must be odd.*got 4"):
        config_from_dict(_tiny(context_slices=4))
    with pytest.raises(ConfigError, match=r"model\.context_slices"):
        config_from_dict(_tiny(context_slices=0))


def test_former_in_channels_key_must_agree() -> None:
    assert ModelConfig.model_validate({"in_channels": 1}).context_slices == 1
    assert ModelConfig.model_validate({"in_channels": 3, "context_slices": 3}).context_slices == 3
    with pytest.raises(ConfigError, match=r"in_channels \(3\) must equal context_slices \(1\)"):
        config_from_dict(_tiny(in_channels=3))
    assert "in_channels" not in ModelConfig().model_dump()


def _cfg(k: int) -> ModelConfig:
    return ModelConfig(
        width=0.125, decoder_channels=(16, 16, 8, 8, 8), feature_taps=(), context_slices=k
    )


def test_model_folder_records_k_and_earlier_folders_mean_one(tmp_path: Path) -> None:
    net = build_model(_cfg(3), [2, 3], domain_specific_bn=True)
    save_model(net, tmp_path / "k3")
    index = json.loads((tmp_path / "k3" / INDEX_FILE).read_text())
    assert index["architecture"]["model"]["context_slices"] == 3
    loaded, _ = load_model(tmp_path / "k3")
    assert loaded.cfg.context_slices == 3 and loaded.encoder.conv1.in_channels == 3
    out = loaded(torch.zeros(2, 3, 32, 32), torch.tensor([0, 1]))
    assert out.logits[1].shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*context_slices = 3"):
        loaded(torch.zeros(2, 1, 32, 32), torch.tensor([0, 1]))
    save_model(build_model(_cfg(1), [2], False), tmp_path / "old")
    index = json.loads((tmp_path / "old" / INDEX_FILE).read_text())
    model = index["architecture"]["model"]
    model["in_channels"] = model.pop("context_slices")  # as written before the key existed
    (tmp_path / "old" / INDEX_FILE).write_text(json.dumps(index))
    assert load_model(tmp_path / "old")[0].cfg.context_slices == 1
