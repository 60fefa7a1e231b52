"""Diffusion style transfer (diffusers): img2img towards a target domain from a local model folder.

Two kinds of model folder are supported, both loaded with `local_files_only=True`:

- `stable_diffusion`: a folder saved by `StableDiffusionImg2ImgPipeline.save_pretrained` (or any
  Stable Diffusion 1.x/2.x folder with vae, unet, text_encoder, tokenizer and scheduler). Each
  domain has a prompt and a strength.
- `unet`: a DDPM/DDIM folder (`unet/` with a `UNet2DModel`, `scheduler/`) trained on the target
  domain. The view is SDEdit: noise the image to `strength`, then denoise with DDIM (eta 0).
  The prompt is ignored, and a domain may name its own model folder.

The image is resized to the working size (a multiple of the VAE downsampling factor, or the
UNet's `sample_size`), transformed, and resized back to the input size with bicubic
interpolation. Grayscale input is stacked to RGB and the output converted back with luma weights.
Loaded pipelines are cached per process, so a Ray worker loads each folder once.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.ood.base import Generator, check_image, check_seed, from_rgb, to_rgb
from schemas.errors import ConfigError

__all__ = ["DiffusionGenerator", "detect_kind"]

log = logging.getLogger(__name__)

KINDS = ("stable_diffusion", "unet")
DTYPES = ("float32", "float16", "bfloat16")


def detect_kind(folder: str | Path) -> str | None:
    """Return "stable_diffusion" or "unet" for a diffusers folder, or None if it is neither."""
    folder = Path(folder)
    if (folder / "text_encoder").is_dir() and (folder / "vae").is_dir():
        return "stable_diffusion"
    if (folder / "unet" / "config.json").is_file() and (folder / "scheduler").is_dir():
        with open(folder / "unet" / "config.json") as file:
            if json.load(file).get("_class_name") == "UNet2DModel":
                return "unet"
    return None


def _torch_seed(seed: int) -> int:
    return int(np.random.SeedSequence(seed).generate_state(1, dtype=np.uint64)[0] >> 1)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@functools.lru_cache(maxsize=4)
def _load_model(folder: str, kind: str, device: str, dtype: str):
    """Load a model folder once per process; returns a pipeline or (unet, scheduler)."""
    import torch

    torch_dtype = getattr(torch, dtype)
    log.info("loading %s diffusion model from %s on %s (%s)", kind, folder, device, dtype)
    if kind == "stable_diffusion":
        from diffusers import StableDiffusionImg2ImgPipeline

        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            folder,
            dtype=torch_dtype,
            safety_checker=None,
            requires_safety_checker=False,
            local_files_only=True,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    from diffusers import DDIMScheduler, UNet2DModel

    unet = (
        UNet2DModel.from_pretrained(
            folder, subfolder="unet", dtype=torch_dtype, local_files_only=True
        )
        .to(device)
        .eval()
    )
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    return unet, scheduler


class DiffusionGenerator(Generator):
    """Img2img style transfer with one sampled target domain per view.

    params: `model` (folder), `kind` ("stable_diffusion", "unet" or "auto"), `domains` (name ->
    {prompt, strength in (0, 1], optional model}), `steps` (default 20), `guidance_scale`
    (default 7.5, Stable Diffusion only), `negative_prompt`, `resolution` (shorter side of the
    working size for Stable Diffusion, default the input size), `device` ("auto", "cpu", "cuda",
    ...), `dtype` (float32, float16 or bfloat16; default float32).
    """

    name = "diffusion"
    param_names = (
        "model",
        "kind",
        "domains",
        "steps",
        "guidance_scale",
        "negative_prompt",
        "resolution",
        "device",
        "dtype",
    )

    def check_params(self, params: dict[str, Any]) -> list[str]:
        problems: list[str] = []
        self.model = params.get("model")
        self.kind = params.get("kind", "auto")
        if self.kind not in (*KINDS, "auto"):
            problems.append(f"kind {self.kind!r} is invalid; use stable_diffusion, unet or auto")
        if not isinstance(self.model, str) or not Path(self.model).is_dir():
            problems.append(
                f"model {self.model!r} is not an existing folder; give the local "
                "folder of a saved diffusers pipeline"
            )
        elif self.kind == "auto":
            self.kind = detect_kind(self.model)
            if self.kind is None:
                problems.append(
                    f"model {self.model!r} is neither a Stable Diffusion folder nor a "
                    "DDPM/DDIM folder with unet/ and scheduler/; set kind explicitly"
                )

        self.domains = params.get("domains")
        problems += self._check_domains(self.domains)

        self.steps = params.get("steps", 20)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            problems.append(f"steps {self.steps!r} is invalid; use an integer >= 1")
        self.guidance_scale = params.get("guidance_scale", 7.5)
        if not _is_number(self.guidance_scale) or self.guidance_scale < 0:
            problems.append(f"guidance_scale {self.guidance_scale!r} is invalid; use a number >= 0")
        self.negative_prompt = params.get("negative_prompt")
        self.resolution = params.get("resolution")
        if self.resolution is not None and (
            not isinstance(self.resolution, int) or self.resolution < 8
        ):
            problems.append(
                f"resolution {self.resolution!r} is invalid; use an integer >= 8 or null"
            )

        self.device = params.get("device", "auto")
        self.dtype = params.get("dtype", "float32")
        if self.dtype not in DTYPES:
            problems.append(f"dtype {self.dtype!r} is invalid; use one of {', '.join(DTYPES)}")
        return problems

    def _check_domains(self, domains: Any) -> list[str]:
        if not isinstance(domains, dict) or not domains:
            return [
                f"domains {domains!r} is invalid; map each domain name to "
                "{prompt: ..., strength: ...}"
            ]
        problems = []
        for name, domain in domains.items():
            if not isinstance(domain, dict):
                problems.append(f"domains.{name} must be a mapping with prompt and strength")
                continue
            unknown = sorted(set(domain) - {"prompt", "strength", "model"})
            if unknown:
                problems.append(
                    f"domains.{name} has unknown keys {unknown}; allowed: prompt, strength, model"
                )
            strength = domain.get("strength")
            if not _is_number(strength) or not 0 < strength <= 1:
                problems.append(
                    f"domains.{name}.strength {strength!r} is invalid; use a number in (0, 1]"
                )
            if self.kind == "stable_diffusion" and not isinstance(domain.get("prompt"), str):
                problems.append(
                    f"domains.{name}.prompt is missing; Stable Diffusion needs a prompt"
                )
            model = domain.get("model")
            if model is not None and (not isinstance(model, str) or not Path(model).is_dir()):
                problems.append(f"domains.{name}.model {model!r} is not an existing folder")
        return problems

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        names = sorted(self.domains)
        name = names[int(rng.integers(len(names)))]
        domain = self.domains[name]
        params = {
            "domain": name,
            "prompt": domain.get("prompt", ""),
            "strength": float(domain["strength"]),
            "steps": self.steps,
        }
        if self.kind == "stable_diffusion":
            params["guidance_scale"] = float(self.guidance_scale)
        return params

    def apply(self, image: np.ndarray, params: dict[str, Any], seed: int) -> np.ndarray:
        check_image(image)
        seed = check_seed(seed)
        missing = [key for key in ("domain", "strength", "steps") if key not in params]
        if missing:
            raise ConfigError([f"view params {params!r} lack {missing}"], source="diffusion view")
        rgb = to_rgb(image)
        folder = self.domains.get(params["domain"], {}).get("model") or self.model
        model = _load_model(str(folder), self.kind, _resolve_device(self.device), self.dtype)
        if self.kind == "stable_diffusion":
            out = self._stable_diffusion(model, rgb, params, seed)
        else:
            out = _sdedit(model, rgb, params, _torch_seed(seed))
        if out.shape[:2] != rgb.shape[:2]:
            out = np.asarray(
                Image.fromarray(out).resize((rgb.shape[1], rgb.shape[0]), Image.Resampling.BICUBIC)
            )
        return from_rgb(out, image)

    def _working_size(self, height: int, width: int, multiple: int) -> tuple[int, int]:
        if self.resolution is not None:
            scale = self.resolution / min(height, width)
            height, width = height * scale, width * scale
        return (
            max(multiple, round(height / multiple) * multiple),
            max(multiple, round(width / multiple) * multiple),
        )

    def _stable_diffusion(self, pipe, rgb: np.ndarray, params: dict[str, Any], seed: int):
        import torch

        height, width = self._working_size(*rgb.shape[:2], pipe.vae_scale_factor)
        source = Image.fromarray(rgb)
        if (height, width) != rgb.shape[:2]:
            source = source.resize((width, height), Image.Resampling.BICUBIC)
        # NOTE: bit-exact repeats are tested on CPU in float32 only, not on GPU or in float16.
        generator = torch.Generator(device=pipe.device).manual_seed(_torch_seed(seed))
        result = pipe(
            prompt=params.get("prompt", ""),
            image=source,
            strength=params["strength"],
            num_inference_steps=params["steps"],
            guidance_scale=params.get("guidance_scale", self.guidance_scale),
            negative_prompt=self.negative_prompt,
            generator=generator,
            output_type="np",
        )
        return _float_to_uint8(result.images[0])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float_to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def _sdedit(model, rgb: np.ndarray, params: dict[str, Any], seed: int) -> np.ndarray:
    """Noise `rgb` to `strength` of the DDIM schedule and denoise it with an unconditional UNet."""
    import torch

    unet, scheduler = model
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    source = Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC)
    device, dtype = unet.device, unet.dtype
    x = torch.from_numpy(np.asarray(source, dtype=np.float32) / 127.5 - 1.0)
    x = x.permute(2, 0, 1)[None].to(device=device, dtype=dtype)

    generator = torch.Generator(device=device).manual_seed(seed)
    scheduler.set_timesteps(params["steps"], device=device)
    start = min(int(round(params["steps"] * (1 - params["strength"]))), params["steps"] - 1)
    timesteps = scheduler.timesteps[start:]
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=dtype)
    x = scheduler.add_noise(x, noise, timesteps[:1])
    with torch.no_grad():
        for t in timesteps:
            predicted = unet(x, t).sample
            x = scheduler.step(predicted, t, x, eta=0.0).prev_sample
    out = ((x[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
    return _float_to_uint8(out)
