"""The reference reaches a pretrained CLIP through transformers' CLIPImageProcessor (resize, centre crop, mean/std)."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from fgbg.models.image_encoder import CLIPImageEncoder

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "image_size": 32, "patch_size": 8, "projection_dim": 32}  # fmt: skip


def clip_folder(tmp_path, processor: CLIPImageProcessor | None):
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY)).save_pretrained(tmp_path)
    if processor is not None:
        processor.save_pretrained(tmp_path)
    return str(tmp_path)


def test_pretrained_encoder_prepares_the_reference_as_its_processor_does(tmp_path):
    """A non-square reference (40x56): the folder's processor (shortest edge 36, centre crop 32, its mean/std)
    gives exactly the encoder's input; the old square resize (``squash``) gives another one."""
    processor = CLIPImageProcessor(size={"shortest_edge": 36}, crop_size=32, image_mean=[0.5, 0.4, 0.3],
                                   image_std=[0.2, 0.25, 0.3])  # fmt: skip
    folder = clip_folder(tmp_path, processor)
    encoder = CLIPImageEncoder(cross_attention_dim=16, pretrained=folder)
    images = torch.rand(2, 3, 40, 56) * 2 - 1
    expected = processor(images=list((images + 1) / 2), do_rescale=False, return_tensors="pt")["pixel_values"]
    ours = encoder.prepare(images)
    assert ours.shape == (2, 3, 32, 32) and torch.equal(ours, expected)
    squash = CLIPImageEncoder(cross_attention_dim=16, pretrained=folder, preprocess="squash").prepare(images)
    assert (squash - ours).abs().mean() > 0.1, "a centre crop and a squash must differ on a non-square image"
    assert encoder(images).shape == (2, 5, 16)


def test_pretrained_folder_without_processor_config_uses_clips_published_settings(tmp_path):
    encoder = CLIPImageEncoder(cross_attention_dim=16, pretrained=clip_folder(tmp_path, None))
    p = encoder.processor
    assert p.crop_size["height"] == p.crop_size["width"] == p.size["shortest_edge"] == TINY["image_size"]
    assert tuple(p.image_mean) == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_tiny_random_encoders_keep_the_square_resize():
    """The tiny configurations (and the shipped demo model) were trained with the square resize: unchanged."""
    encoder = CLIPImageEncoder(cross_attention_dim=16, config=TINY)
    assert encoder.processor is None
    with pytest.raises(ValueError, match="preprocess='crop'"):
        CLIPImageEncoder(cross_attention_dim=16, config=TINY, preprocess="crop")
