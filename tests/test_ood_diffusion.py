"""Tests of diffusion style transfer with tiny random diffusers models saved to a tmp folder."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.ood import build_generator
from pipeline.ood.diffusion import _load_model, detect_kind
from schemas.errors import ConfigError
from tests.test_ood_adversarial import one_torch_thread  # noqa: F401


def write_tiny_stable_diffusion(folder: Path) -> Path:
    """Save a randomly initialised Stable Diffusion img2img pipeline with a letter-level vocab."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in string.ascii_lowercase:
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16
    )

    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    # Four VAE blocks give the real downsampling factor of 8.
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )
    scheduler = DDIMScheduler(num_train_timesteps=100, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def write_tiny_ddpm(folder: Path) -> Path:
    """Save a randomly initialised unconditional DDPM pipeline (UNet2DModel at 16 px)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(1)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusion")
    return {
        "stable_diffusion": write_tiny_stable_diffusion(root / "sd"),
        "unet": write_tiny_ddpm(root / "ddpm"),
    }


def sd_params(folder: Path, **overrides) -> dict:
    params = {
        "model": str(folder),
        "steps": 2,
        "guidance_scale": 2.0,
        "device": "cpu",
        "domains": {
            "sketch": {"prompt": "a pencil sketch", "strength": 0.6},
            "snow": {"prompt": "a snowy day", "strength": 0.9},
        },
    }
    params.update(overrides)
    return params


def image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_kind_detected(model_folders, tmp_path):
    assert detect_kind(model_folders["stable_diffusion"]) == "stable_diffusion"
    assert detect_kind(model_folders["unet"]) == "unet"
    assert detect_kind(tmp_path) is None


@pytest.mark.parametrize("shape", [(28, 28), (32, 32, 3), (37, 45, 3), (256, 256, 3)])
def test_stable_diffusion_keeps_shape(model_folders, shape):
    generator = build_generator("diffusion", sd_params(model_folders["stable_diffusion"]))
    source = image(shape)
    view, params = generator.generate(source, seed=3)
    assert view.shape == source.shape
    assert view.dtype == np.uint8
    assert params["domain"] in {"sketch", "snow"}
    assert json.loads(json.dumps(params)) == params


def test_stable_diffusion_deterministic(model_folders):
    params = sd_params(model_folders["stable_diffusion"])
    source = image((37, 45, 3))
    first, view_params = build_generator("diffusion", params).generate(source, seed=11)
    _load_model.cache_clear()  # a fresh load must give the same bytes
    second = build_generator("diffusion", params).apply(source, view_params, 11)
    assert first.tobytes() == second.tobytes()
    other, _ = build_generator("diffusion", params).generate(source, seed=12)
    assert not np.array_equal(first, other)


def test_resolution_sets_working_size(model_folders):
    params = sd_params(model_folders["stable_diffusion"], resolution=64)
    generator = build_generator("diffusion", params)
    assert generator._working_size(30, 45, 8) == (64, 96)
    view, _ = generator.generate(image((30, 45, 3)), seed=0)
    assert view.shape == (30, 45, 3)


def test_unet_sdedit(model_folders):
    params = {
        "model": str(model_folders["unet"]),
        "steps": 4,
        "device": "cpu",
        "domains": {"weak": {"strength": 0.25}, "strong": {"strength": 1.0}},
    }
    generator = build_generator("diffusion", params)
    assert generator.kind == "unet"
    source = image((33, 21, 3))
    weak = generator.apply(source, {"domain": "weak", "strength": 0.25, "steps": 4}, 5)
    strong = generator.apply(source, {"domain": "strong", "strength": 1.0, "steps": 4}, 5)
    assert weak.shape == source.shape
    assert weak.dtype == np.uint8
    again = generator.apply(source, {"domain": "weak", "strength": 0.25, "steps": 4}, 5)
    assert weak.tobytes() == again.tobytes()
    assert not np.array_equal(weak, strong)


def test_invalid_params_listed(model_folders, tmp_path):
    params = {
        "model": str(tmp_path / "missing"),
        "kind": "gan",
        "steps": 0,
        "dtype": "float8",
        "domains": {"a": {"strength": 1.5}, "b": "sketch"},
    }
    with pytest.raises(ConfigError, match="6 problem") as error:
        build_generator("diffusion", params)
    message = str(error.value)
    for fragment in (
        "kind 'gan' is invalid",
        "is not an existing folder",
        "strength 1.5 is invalid",
        "domains.b must be a mapping",
        "steps 0 is invalid",
        "dtype 'float8'",
    ):
        assert fragment in message
    with pytest.raises(ConfigError, match="prompt is missing"):
        build_generator(
            "diffusion",
            sd_params(model_folders["stable_diffusion"], domains={"a": {"strength": 0.5}}),
        )
    with pytest.raises(ConfigError, match="neither a Stable Diffusion folder"):
        build_generator("diffusion", sd_params(tmp_path))
