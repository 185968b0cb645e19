"""Which parts of each model family's set-up have a size that sd-scripts fixes in code, and how big.

    KOHYA_SD_SCRIPTS=/work/sd/v011 /work/sd/v011/venv/bin/python bench/family_fixed_sizes.py

A CPU test with random weights can shrink what sd-scripts reads from the weight file (block counts,
MMDiT depth, folder-loaded text encoders), not a component whose config is a literal in its code.
Each component is built on the meta device (nothing allocated) by sd-scripts' own loader or class;
where the config sits inside a loader, the class it builds is swapped for a stand-in that builds it
and stops the loader before any file is read, so the size cannot come from a file. Prints the
machine, the sd-scripts commit, a markdown table (bf16 = 2 bytes/param; fp8 = 1 byte/param, a lower
bound: sd-scripts keeps some layers in higher precision) and per family the fixed parts' sum
against 24 GiB RAM and the disk free for the cache.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded: every config is in code
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
SD = Path(os.environ.get("KOHYA_SD_SCRIPTS", "")).expanduser().resolve()
if not (SD / "library").is_dir():
    raise SystemExit("set KOHYA_SD_SCRIPTS to an sd-scripts checkout")
sys.path.insert(0, str(SD))

import torch  # noqa: E402
from torch import nn  # noqa: E402

GIB = 1024**3
RAM_LIMIT = 24 * GIB


@dataclass
class Row:
    family: str
    component: str
    fixed_by: str
    params: int | None = None
    buffers: int = 0
    note: str = ""
    in_sum: bool = True  # False: a reference size (the full model) or a size read from files


class _Built(Exception):
    """Carries the module a loader built out of the loader, before it reads any file."""


class _Stop:
    """Stands in for a class a loader builds: builds the real one (plain call or HF `_from_config`) and stops."""

    def __init__(self, cls: Any) -> None:
        self.cls = cls

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise _Built(self.cls(*args, **kwargs))

    def _from_config(self, *args: Any, **kwargs: Any) -> None:
        raise _Built(self.cls._from_config(*args, **kwargs))


def capture(owner: Any, name: str, load: Callable[[], Any]) -> nn.Module:
    """The module `load()` builds as `owner.<name>`; `load` gets as far as the build, never to its file read."""
    with mock.patch.object(owner, name, _Stop(getattr(owner, name))):
        try:
            load()
        except _Built as built:
            return built.args[0]
    raise RuntimeError(f"the loader never built {name}: sd-scripts changed")


def row(family: str, component: str, fixed_by: str, build: Callable[[], nn.Module], note: str = "", in_sum: bool = True) -> Row:
    """One component's row; a failure becomes the row's note instead of stopping the benchmark."""
    r = Row(family, component, fixed_by, note=note, in_sum=in_sum)
    try:
        with torch.device("meta"):  # buffers too, unlike init_empty_weights: nothing is allocated
            m = build()
        r.params = sum(p.numel() for p in m.parameters())  # parameters() skips tied duplicates
        r.buffers = sum(b.numel() for b in m.buffers())
    except Exception as e:  # noqa: BLE001 - reported in the table, the other rows go on
        r.note = f"NOT COUNTED: {type(e).__name__}: {str(e)[:150]}"
    return r


A = "absent.safetensors"  # never opened: each capture stops its loader before the read
BF16 = torch.bfloat16


def sdxl() -> list[Row]:
    from library import sdxl_original_unet as u

    # A diffusers folder's text encoders and VAE load with the folder's configs; the U-Net is always converted into this class.
    return [row("SDXL", "U-Net", "sdxl_original_unet.py:SdxlUNet2DConditionModel", u.SdxlUNet2DConditionModel,
                "only in_channels read from the file; CLIP-L/G, VAE: folder config (free) in diffusers format")]


def flux() -> list[Row]:
    from library import flux_models, flux_utils as fu

    r, p = partial(row, "FLUX.1"), flux_models.configs["dev"].params
    return [
        r("DiT 1 double + 1 single", "flux_utils.py:load_flow_model (configs['dev'])", lambda: flux_models.Flux(replace(p, depth=1, depth_single_blocks=1)),
          "block counts read from the file (analyze_checkpoint_state); width 3072 fixed"),
        r("DiT 19 + 38 (dev)", "flux_utils.py:load_flow_model", lambda: flux_models.Flux(p), "reference", False),
        r("T5-XXL encoder", "flux_utils.py:load_t5xxl", lambda: capture(fu, "T5EncoderModel", lambda: fu.load_t5xxl(A, BF16, "cpu"))),
        r("CLIP-L", "flux_utils.py:load_clip_l", lambda: capture(fu, "CLIPTextModel", lambda: fu.load_clip_l(A, BF16, "cpu"))),
        r("AutoEncoder", "flux_utils.py:load_ae", lambda: capture(flux_models, "AutoEncoder", lambda: fu.load_ae(A, BF16, "cpu"))),
    ]


def sd3() -> list[Row]:
    from library import flux_utils, sd3_models as sm, sd3_utils as su

    # What analyze_state_dict_state reads from a file: depth = x_embedder rows / 64 (width 64 * depth), pos_embed size,
    # qk_norm, x-self-attention layers; adm 2048 (CLIP-L+G pooled) and context 4096 (T5) follow the fixed text encoders.
    def mmdit(depth: int, pos: int, qk: str | None = None, xattn: int = 0, kind: str = "medium") -> nn.Module:
        return sm.create_sd3_mmdit(sm.SD3Params(2, depth, pos * pos, pos, 2048, qk, list(range(xattn)), 4096, 64 * depth, kind))

    r, clip, src = partial(row, "SD3/3.5"), "CLIPTextModelWithProjection", "sd3_utils.py:analyze_state_dict_state"
    return [
        r("MMDiT depth 1", src, lambda: mmdit(1, 192), "depth read from the file; the loader builds depth 1 (width 64)"),
        r("MMDiT 3.5-medium (24)", src, lambda: mmdit(24, 384, "rms", 13, "5-medium"), "reference", False),
        r("MMDiT 3.5-large (38)", src, lambda: mmdit(38, 192, "rms", 0, "5-large"), "reference", False),
        r("CLIP-G", "sd3_utils.py:load_clip_g", lambda: capture(su, clip, lambda: su.load_clip_g(A, BF16, "cpu"))),
        r("CLIP-L", "sd3_utils.py:load_clip_l", lambda: capture(su, clip, lambda: su.load_clip_l(A, BF16, "cpu"))),
        r("T5-XXL encoder", "sd3_utils.py:load_t5xxl -> flux_utils.py:load_t5xxl",
          lambda: capture(flux_utils, "T5EncoderModel", lambda: su.load_t5xxl(A, BF16, "cpu"))),
        r("VAE", "sd3_models.py:SDVAE", sm.SDVAE, "no config arguments"),
    ]


def lumina() -> list[Row]:
    from library import flux_models, lumina_models, lumina_util as lu

    r = partial(row, "Lumina")
    return [
        r("NextDiT 2B", "lumina_util.py:load_lumina_model (LuminaParams.get_2b_config)",
          lambda: capture(lumina_models, "NextDiT_2B_GQA_patch2_Adaln_Refiner", lambda: lu.load_lumina_model(A, BF16, "cpu"))),
        r("Gemma2-2B", "lumina_util.py:load_gemma2", lambda: capture(lu, "Gemma2Model", lambda: lu.load_gemma2(A, BF16, "cpu"))),
        r("AE (FLUX AE)", "lumina_util.py:load_ae", lambda: capture(flux_models, "AutoEncoder", lambda: lu.load_ae(A, BF16, "cpu"))),
    ]


def hunyuan() -> list[Row]:
    from transformers import ByT5Tokenizer

    from library import hunyuan_image_models as hm, hunyuan_image_text_encoder as te, hunyuan_image_vae as hv

    def byt5() -> nn.Module:
        # load_byt5 first fetches google/byt5-small's tokenizer: byte-level, so it is built locally instead
        with mock.patch.object(te, "AutoTokenizer", mock.Mock(from_pretrained=lambda *_: ByT5Tokenizer())):
            enc = capture(te, "T5ForConditionalGeneration", lambda: te.load_byt5(A, BF16, "cpu")).get_encoder()
        te.add_special_token(ByT5Tokenizer(), enc)  # as load_byt5 goes on: color/font tokens grow the embedding
        return enc

    r = partial(row, "HunyuanImage-2.1")
    return [
        r("DiT 20 + 40", "hunyuan_image_models.py:create_model", lambda: hm.create_model("torch", False, None), "no size arguments"),
        r("Qwen2.5-VL-7B", "hunyuan_image_text_encoder.py:load_qwen2_5_vl",
          lambda: capture(te, "Qwen2_5_VLForConditionalGeneration", lambda: te.load_qwen2_5_vl(A, BF16, "cpu")),
          "whole VL model incl. vision tower + lm_head (loaded strict=True); --fp8_vl"),
        r("byT5-small encoder", "hunyuan_image_text_encoder.py:load_byt5", byt5, "embedding incl. the rows add_special_token adds"),
        r("VAE", "hunyuan_image_vae.py:load_vae (HunyuanVAE2D)", lambda: capture(hv, "HunyuanVAE2D", lambda: hv.load_vae(A, "cpu")),
          "no size arguments"),
    ]


def anima() -> list[Row]:
    import transformers

    from library import anima_models, anima_utils as au, qwen_image_autoencoder_kl as qv

    r = partial(row, "Anima")
    return [
        r("DiT", "anima_utils.py:load_anima_model (dit_config literal)",
          lambda: capture(anima_models, "Anima", lambda: au.load_anima_model("cpu", A, "torch", False, "cpu", BF16))),
        r("Qwen-Image VAE", "qwen_image_autoencoder_kl.py:load_vae", lambda: capture(qv, "AutoencoderKLQwenImage", lambda: qv.load_vae(A))),
        r("Qwen3-0.6B (single file)", "anima_utils.py:load_qwen3_text_encoder (configs/qwen3_06b)",
          lambda: capture(transformers, "Qwen3ForCausalLM", lambda: au.load_qwen3_text_encoder(A)).model,
          "a folder brings its own config (free size); a single .safetensors uses this one", False),
    ]


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), "?")
    mem = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in Path("/proc/meminfo").read_text().splitlines()}
    try:
        commit = subprocess.run(["git", "-C", str(SD), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    return (f"machine: {cpu}, {os.cpu_count()} cores, RAM {mem['MemTotal'] / GIB:.1f} GiB "
            f"({mem['MemAvailable'] / GIB:.1f} GiB available now); torch {torch.__version__}\nsd-scripts: {SD} @ {commit}")


def main() -> int:
    t0 = time.perf_counter()
    logging.disable(logging.INFO)  # sd-scripts' loaders log each build; only the table matters here
    rows = [r for family in (sdxl, flux, sd3, lumina, hunyuan, anima) for r in family()]
    print(machine(), "\n")
    print("| family | component | fixed by (file:function in sd-scripts) | parameters (B) | bf16 GB | fp8 GB | notes |")
    print("|---|---|---|---:|---:|---:|---|")
    for r in rows:
        # buffers (rope tables, pos_embed) are not parameters but are held in memory; pos_embed is also in the file
        buffers = f"+{r.buffers / 1e6:.1f} M buffer elements" if r.buffers >= 50_000 else ""
        notes = [x for x in (r.note, buffers, "" if r.in_sum else "not in sum") if x]
        n = r.params
        sizes = "- | - | -" if n is None else f"{n / 1e9:.3f} | {n * 2 / 1e9:.2f} | {n / 1e9:.2f}"
        print(f"| {r.family} | {r.component} | {r.fixed_by} | {sizes} | {'; '.join(notes)} |")

    cache = Path("~/.cache/kohya-ext").expanduser()
    while not cache.exists():  # measure the disk the cache will live on without creating it
        cache = cache.parent
    free = shutil.disk_usage(cache).free
    print(f"\nfixed parts per family (bf16 / fp8 lower bound) vs 24 GiB RAM = {RAM_LIMIT / 1e9:.2f} GB "
          f"and {free / 1e9:.1f} GB free on {cache} (random weights are written there before training)\n")
    print("| family | fixed bf16 GB | fixed fp8 GB | bf16 in 24 GiB | fp8 in 24 GiB | bf16 on disk | uncounted |")
    print("|---|---:|---:|---|---|---|---|")
    for fam in dict.fromkeys(r.family for r in rows):
        part = [r for r in rows if r.family == fam and r.in_sum]
        n = sum(r.params or 0 for r in part)
        missing = ", ".join(r.component for r in part if r.params is None) or "-"
        ok = lambda b: "yes" if n * b < RAM_LIMIT else "NO"  # noqa: E731 - params only: activations, optimizer, OS come on top
        print(f"| {fam} | {n * 2 / 1e9:.1f} | {n / 1e9:.1f} | {ok(2)} | {ok(1)} | {'yes' if n * 2 < free else 'NO'} | {missing} |")
    print(f"\nrun time {time.perf_counter() - t0:.1f} s (parameters only; RAM need is higher: activations, grads, optimizer, OS)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
