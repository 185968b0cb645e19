"""Build a tiny, randomly initialised SD1.x model, tokenizer and dataset for real sd-scripts runs.

No download: every weight is random, the CLIP tokenizer is built offline, the images come
from the shared TADNE grid (or are synthetic when ../shared is absent).

Run it with the *sd-scripts* venv's Python (it needs diffusers and transformers, which the
kohya-ext venv does not have); importing this module needs neither:

    /path/to/sd-venv/bin/python tests/sd_tiny_model.py OUT_DIR [--bpe PATH] [--steps 4]

prints the layout as JSON and the `train_network.py` command line that trains on it.
From Python (same venv): `tiny = build_tiny_sd15(out_dir)`; `tiny.train_network_args(...)`.

Layout written under OUT_DIR:
    model/                                      diffusers SD1.x folder -> --pretrained_model_name_or_path
    tokenizers/openai_clip-vit-large-patch14/   CLIP tokenizer           -> --tokenizer_cache_dir tokenizers
    train/1_tadne/NN.png + NN.txt               images + captions        -> --train_data_dir train
    prompts.txt                                 kohya prompt file        -> --sample_prompts
    tiny_sd.json                                this layout, as JSON

Why the U-Net is big: sd-scripts converts a diffusers U-Net into its own `original_unet`
class, whose layout is fixed (320/640/1280/1280 channels, 2 resnets per block, 1 transformer
per attention block). Only the cross-attention width (= text encoder width) and the head
count are free, so the U-Net keeps ~800M parameters (~3.3 GB fp32 on disk); the text encoder
and the VAE are tiny.

Other families (`--family sdxl|anima|flux|sd3|lumina`, each builder's docstring says what it
costs): the DiT families are built with sd-scripts' own model classes and the configs of its
loaders, from the checkout named by `--sd_scripts` (default $KOHYA_SD_SCRIPTS); `model_dir` is
then the DiT file, and the other model files are `TinySD.models` (--qwen3/--vae,
--clip_l/--clip_g/--t5xxl/--ae, --gemma2).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KOHYA_EXT_SHARED", REPO.parent / "shared"))
GRID = SHARED / "data" / "tadne" / "grid.jpg"
TILE = 512
# sd-scripts looks the SD1 tokenizer up as <tokenizer_cache_dir>/<model id with "/" -> "_">.
TOKENIZER_DIR_NAME = "openai_clip-vit-large-patch14"
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# CLIP's vocab: 256 bytes, 256 bytes+"</w>", 48894 merges, 2 specials = 49408 (openai's tokenizer).
CLIP_N_MERGES = 49152 - 256 - 2
TEXT_WIDTH = 32  # text encoder hidden size = U-Net cross_attention_dim


@dataclass
class TinySD:
    """Paths of a built tiny SD1.x set-up (all absolute)."""

    root: str
    model_dir: str
    tokenizer_cache_dir: str
    train_data_dir: str
    prompts_file: str
    resolution: int
    n_images: int
    tokenizer_source: str  # "clip-bpe" (real CLIP vocab), "byte-level" (no BPE file found), or Anima's (sd-scripts' own)
    family: str = "sd15"  # sd15 | sdxl | anima | flux | sd3 | lumina
    script: str = "train_network.py"  # the sd-scripts script that trains this family
    # option name (no "--") -> path, for the families whose script loads several files (--qwen3, --vae,
    # --clip_l, --t5xxl, --ae); model_dir is then the DiT file (--pretrained_model_name_or_path)
    models: dict[str, str] = field(default_factory=dict)

    def train_network_args(
        self,
        output_dir: str | os.PathLike,
        logging_dir: str | os.PathLike | None = None,
        steps: int = 4,
        save_every: int = 2,
        sample_every: int = 2,
        output_name: str = "tiny",
    ) -> list[str]:
        """Arguments for `train_network.py` (after the script name) that train a LoRA on CPU."""
        logging_dir = logging_dir if logging_dir is not None else Path(output_dir) / "logs"
        return [
            "--pretrained_model_name_or_path", self.model_dir,
            "--tokenizer_cache_dir", self.tokenizer_cache_dir,
            "--train_data_dir", self.train_data_dir,
            "--caption_extension", ".txt",
            "--resolution", str(self.resolution),
            "--network_module", "networks.lora",
            "--network_dim", "4",
            "--network_alpha", "1",
            "--optimizer_type", "AdamW",
            "--learning_rate", "1e-4",
            "--train_batch_size", "1",
            "--max_train_steps", str(steps),
            "--mixed_precision", "no",
            "--save_precision", "float",
            "--seed", "0",
            "--max_data_loader_n_workers", "0",
            "--output_dir", str(output_dir),
            "--output_name", output_name,
            "--save_model_as", "safetensors",
            "--save_every_n_steps", str(save_every),
            "--sample_every_n_steps", str(sample_every),
            "--sample_prompts", self.prompts_file,
            "--sample_sampler", "euler_a",
            "--logging_dir", str(logging_dir),
            "--log_with", "tensorboard",
            *(a for name, path in self.models.items() for a in (f"--{name}", path)),
            *FAMILY_ARGS.get(self.family, []),
        ]


#: each family's usual LoRA options (docs/training.md, families), replacing the SD1.x defaults above where both are given
FAMILY_ARGS: dict[str, list[str]] = {
    # the issue-16 recipe: cached latents and text-encoder outputs, U-Net only, bf16 throughout, checkpointing
    "sdxl": ["--cache_latents", "--cache_text_encoder_outputs", "--network_train_unet_only", "--mixed_precision", "bf16",
             "--full_bf16", "--gradient_checkpointing", "--save_precision", "bf16"],
    # docs/anima_train_network.md's recipe (LoRA on the DiT, cached latents and Qwen3 outputs, bf16, checkpointing,
    # sigmoid timesteps, shift 1.0; attention is torch's by default). Token lengths 64 instead of 512: the LLM
    # adapter and every block's cross-attention run over the padded T5/Qwen3 tokens, the main cost at 64 px.
    "anima": ["--network_module", "networks.lora_anima", "--cache_latents", "--cache_text_encoder_outputs",
              "--network_train_unet_only", "--mixed_precision", "bf16", "--gradient_checkpointing", "--save_precision", "bf16",
              "--timestep_sampling", "sigmoid", "--discrete_flow_shift", "1.0",
              "--qwen3_max_token_length", "64", "--t5_max_token_length", "64"],
    # docs/flux_train_network.md's recipe (guidance 1.0, flux_shift timesteps, raw prediction, fp8 base), cached
    # latents and text-encoder outputs, DiT only, bf16, checkpointing. T5 tokens 64 instead of 512: T5-XXL encodes
    # every caption and prompt on the CPU (~100 s each here). --fp8_base works on this CPU (the DiT is stored as
    # float8_e4m3fn and computes under bf16 autocast; a step took 218 s in fp8, ~210 s in bf16, on 2 busy cores);
    # T5 stays bf16: sd-scripts casts text encoders to fp8 only off the CPU (train_network.py).
    "flux": ["--network_module", "networks.lora_flux", "--cache_latents", "--cache_text_encoder_outputs",
             "--network_train_unet_only", "--t5xxl_max_token_length", "64", "--mixed_precision", "bf16", "--fp8_base",
             "--gradient_checkpointing", "--save_precision", "bf16", "--guidance_scale", "1.0",
             "--timestep_sampling", "flux_shift", "--model_prediction_type", "raw"],
    # docs/sd3_train_network.md's recipe (networks.lora_sd3, uniform weighting, checkpointing) with cached latents and
    # text-encoder outputs, MMDiT only, bf16 (fp16 in the doc: slow on a CPU). T5 tokens 64 instead of 256, as for FLUX.
    "sd3": ["--network_module", "networks.lora_sd3", "--cache_latents", "--cache_text_encoder_outputs",
            "--network_train_unet_only", "--t5xxl_max_token_length", "64", "--mixed_precision", "bf16",
            "--gradient_checkpointing", "--save_precision", "bf16", "--weighting_scheme", "uniform"],
    # docs/lumina_train_network.md's recipe (networks.lora_lumina, nextdit_shift timesteps with shift 6, raw prediction,
    # its system prompt, bf16, checkpointing, cached latents and text-encoder outputs), DiT only; Gemma2 tokens 64
    # instead of 256 (the system prompt takes ~20 of them).
    "lumina": ["--network_module", "networks.lora_lumina", "--cache_latents", "--cache_text_encoder_outputs",
               "--network_train_unet_only", "--gemma2_max_token_length", "64", "--mixed_precision", "bf16",
               "--gradient_checkpointing", "--save_precision", "bf16", "--timestep_sampling", "nextdit_shift",
               "--discrete_flow_shift", "6.0", "--model_prediction_type", "raw",
               "--system_prompt", "You are an assistant designed to generate high-quality images based on user prompts."],
}


def find_clip_bpe(bpe_path: str | os.PathLike | None = None) -> bytes | None:
    """The gzipped CLIP BPE merges, from `bpe_path` (.txt.gz or an open_clip_torch wheel),
    else from an installed open_clip (located without importing it), else None."""
    if bpe_path is None:
        import importlib.util

        spec = importlib.util.find_spec("open_clip")
        if spec is None or spec.origin is None:
            return None
        bpe_path = Path(spec.origin).parent / BPE_NAME
    p = Path(bpe_path)
    if p.suffix == ".whl":
        with zipfile.ZipFile(p) as z:
            return z.read(f"open_clip/{BPE_NAME}")
    return p.read_bytes()


def _write_tokenizer_files(tok_dir: Path, bpe_gz: bytes | None) -> str:
    """Write vocab.json + merges.txt in the layout of openai/clip-vit-large-patch14.

    With CLIP's BPE file the vocab is derived the way CLIP builds it (bytes, bytes + "</w>",
    the first 48894 merges, then the two special tokens). Without it, a byte-level vocab with
    no merges: 514 tokens, every word spelt byte by byte. Both tokenise any text.
    """
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    merges: list[str] = []
    if bpe_gz is not None:
        lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
        merges = lines[1 : 1 + CLIP_N_MERGES]  # line 0 is a version header
        vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    merges_txt = "#version: 0.2\n" + "".join(m + "\n" for m in merges)
    (tok_dir / "merges.txt").write_text(merges_txt, encoding="utf-8")
    return "clip-bpe" if merges else "byte-level"


def build_tokenizer(tok_dir: Path, bpe_path: str | os.PathLike | None = None):
    """Write and load an SD1.x CLIP tokenizer (model_max_length 77, pad = eos as in SD1)."""
    from transformers import CLIPTokenizer

    source = _write_tokenizer_files(tok_dir, find_clip_bpe(bpe_path))
    tok = CLIPTokenizer(
        str(tok_dir / "vocab.json"),
        str(tok_dir / "merges.txt"),
        model_max_length=77,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tok.save_pretrained(str(tok_dir))
    return tok, source


def _dataset_images(n: int, size: int) -> list:
    """`n` portraits from the shared TADNE grid, else synthetic colour images."""
    import numpy as np
    from PIL import Image

    if GRID.exists():
        grid = Image.open(GRID).convert("RGB")
        cols = grid.width // TILE
        boxes = [((i % cols) * TILE, (i // cols) * TILE) for i in range(n)]
        tiles = [grid.crop((x, y, x + TILE, y + TILE)) for x, y in boxes]
    else:
        rng = np.random.default_rng(0)
        tiles = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(n)]
    # Resized to the training resolution so sd-scripts needs no --enable_bucket.
    return [t.resize((size, size), Image.BICUBIC) for t in tiles]


def build_tiny_sd15(
    out_dir: str | os.PathLike,
    n_images: int = 4,
    resolution: int = 64,
    bpe_path: str | os.PathLike | None = None,
    seed: int = 0,
) -> TinySD:
    """Write a random SD1.x diffusers folder, CLIP tokenizer cache, dataset and prompt file.

    `bpe_path`: CLIP's bpe_simple_vocab_16e6.txt.gz or an open_clip_torch wheel holding it;
    by default taken from an installed open_clip, else a byte-level vocab is used.
    Takes 25-50 s on 2 cores, ~3.3 GB of disk and ~7.4 GB of RAM at peak (the U-Net, see the module docstring).
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = Path(out_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    tok_dir = root / "tokenizers" / TOKENIZER_DIR_NAME
    tokenizer, tok_source = build_tokenizer(tok_dir, bpe_path)

    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_WIDTH,
            intermediate_size=2 * TEXT_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # sd-scripts' sampler (lpw pipeline) rescales prompt embeddings by mean_before / mean_after.
    # A fresh LayerNorm (bias 0) gives every token a zero mean, so that is 0/0 and the sample
    # images come out NaN (black). A non-zero bias, as in trained CLIP, keeps the mean away from 0.
    with torch.no_grad():
        text_encoder.text_model.final_layer_norm.bias.normal_(0.1, 0.1)
    # SD1.x layout (diffusers defaults: 3 cross-attention down blocks + 1 plain, 2 layers each),
    # which sd-scripts' original_unet requires; only the text width and head count are small.
    unet = UNet2DConditionModel(
        sample_size=resolution // 8,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
    )
    # 4 blocks = 3 downsamplings = the /8 latent sd-scripts assumes; 32 channels (GroupNorm(32)).
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        sample_size=resolution,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    model_dir = root / "model"
    pipe.save_pretrained(str(model_dir), safe_serialization=True)
    return _write_dataset(root, model_dir, n_images, resolution, tok_source)


#: SDXL base's U-Net, as diffusers writes it (stabilityai/stable-diffusion-xl-base-1.0 unet/config.json).
#: sd-scripts converts it into its fixed-layout SdxlUNet2DConditionModel: nothing in it can shrink.
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
#: sd-scripts looks the second SDXL tokenizer up under this name in --tokenizer_cache_dir
SDXL_TOKENIZER2_DIR_NAME = "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"


def build_tiny_sdxl(
    out_dir: str | os.PathLike,
    n_images: int = 4,
    resolution: int = 64,
    bpe_path: str | os.PathLike | None = None,
    seed: int = 0,
) -> TinySD:
    """A randomly initialised SDXL set-up sd-scripts' sdxl_train_network.py loads as a diffusers folder.

    The U-Net is SDXL's full layout (2.57 B parameters, built and saved in bf16: ~4.8 GB), because
    sd-scripts converts it into a fixed-size class. The text encoders keep only what sd-scripts
    reads: widths 768 and 1280 (their concatenation is the U-Net's 2048 context; the pooled 1280
    output feeds the 2816-wide time embedding), 12 layers for the first (sd-scripts takes
    hidden_states[11]) and 2 for the second (hidden_states[-2]), narrow MLPs. The VAE is SD1.x's
    tiny one (4 latent channels, /8). Built in ~1-2 min on 2 cores; peak RAM ~6 GB.
    """
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = Path(out_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer, tok_source = build_tokenizer(root / "tokenizers" / TOKENIZER_DIR_NAME, bpe_path)
    tokenizer_2, _ = build_tokenizer(root / "tokenizers" / SDXL_TOKENIZER2_DIR_NAME, bpe_path)

    def clip_config(width: int, layers: int, heads: int) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * heads, num_hidden_layers=layers,
                              num_attention_heads=heads, max_position_embeddings=77, projection_dim=width,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, hidden_act="gelu")

    text_encoder = CLIPTextModel(clip_config(768, 12, 12))
    text_encoder_2 = CLIPTextModelWithProjection(clip_config(1280, 2, 20))
    with torch.no_grad():  # see build_tiny_sd15: a zero-mean embedding makes the lpw sampler divide 0 by 0
        text_encoder.text_model.final_layer_norm.bias.normal_(0.1, 0.1)
        text_encoder_2.text_model.final_layer_norm.bias.normal_(0.1, 0.1)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: 5 GB instead of 10 GB at peak
    try:
        unet = UNet2DConditionModel(**SDXL_UNET)
    finally:
        torch.set_default_dtype(default_dtype)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4, sample_size=resolution)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
    model_dir = root / "model"
    pipe.save_pretrained(str(model_dir), safe_serialization=True)
    tiny = _write_dataset(root, model_dir, n_images, resolution, tok_source, family="sdxl", script="sdxl_train_network.py")
    return tiny


def _sd_scripts(sd_scripts: str | os.PathLike | None) -> Path:
    """The sd-scripts checkout whose loaders define the DiT families' layouts (default $KOHYA_SD_SCRIPTS),
    put on sys.path so that `library.*` imports."""
    path = sd_scripts or os.environ.get("KOHYA_SD_SCRIPTS")
    if not path or not (Path(path) / "library").is_dir():
        raise SystemExit("this family is built with sd-scripts' own classes: pass --sd_scripts or set KOHYA_SD_SCRIPTS to a checkout")
    path = Path(path).resolve()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    return path


def _model_folder(out_dir: str | os.PathLike, seed: int) -> tuple[Path, Path]:
    """(root, root/model), created, with torch seeded: how every DiT family's build starts."""
    import torch

    root = Path(out_dir).resolve()
    (root / "model").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    return root, root / "model"


def _loader_kwargs(module, class_name: str, load) -> dict:
    """The keyword arguments sd-scripts' loader `load()` builds `module.<class_name>` with.

    The Anima DiT's and the Qwen-Image VAE's configs are literals inside their loaders (the file
    only fills the weights): captured from the loader rather than copied, so the model follows
    whichever checkout builds it. The class is swapped for a function that stops the loader there.
    """

    class _Built(Exception):
        pass

    def capture(**kwargs):
        raise _Built(kwargs)

    cls = getattr(module, class_name)
    setattr(module, class_name, capture)
    try:
        load()
    except _Built as built:
        return dict(built.args[0])
    finally:
        setattr(module, class_name, cls)
    raise RuntimeError(f"{load} never built {class_name}: sd-scripts' loader changed")


def save_safetensors_streaming(path: str | os.PathLike, layout: dict, tensors, metadata: dict[str, str] | None = None) -> None:
    """Write a .safetensors file one tensor at a time.

    `layout` ({name: (shape, torch dtype)}) makes the header, `tensors` yields (name, tensor) in
    that order. safetensors' save_file first turns every tensor into bytes, twice the model in RAM
    (11 GB peak for SDXL's 4.8 GB U-Net); T5-XXL alone is 9.5 GB and is generated block by block.
    """
    import math

    import torch

    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, (shape, dtype) in layout.items():
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": names[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # tensor data 8-byte aligned, as safetensors itself writes it
    expected = iter(layout.items())
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, t in tensors:
            want, (shape, dtype) = next(expected, (None, ((), None)))
            if name != want or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ValueError(f"{path}: got {name} {tuple(t.shape)} {t.dtype}, header says {want} {tuple(shape)} {dtype}")
            f.write(memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))
    if next(expected, None) is not None:
        raise ValueError(f"{path}: fewer tensors than the header holds")


def _save_module(path: Path, named: dict) -> None:
    """`named` ({name: tensor}, e.g. a state dict) as safetensors, in its own dtypes."""
    save_safetensors_streaming(path, {k: (tuple(v.shape), v.dtype) for k, v in named.items()}, named.items())


def build_tiny_anima(
    out_dir: str | os.PathLike,
    n_images: int = 4,
    resolution: int = 64,
    bpe_path: str | os.PathLike | None = None,
    seed: int = 0,
    sd_scripts: str | os.PathLike | None = None,
) -> TinySD:
    """A randomly initialised Anima set-up for sd-scripts' anima_train_network.py.

    The DiT is sd-scripts' own `anima_models.Anima` with the fixed config its loader builds
    (28 blocks, 2048 channels, LLM adapter: 2.09 B parameters), built in bf16 and saved as the
    loader reads it (`net.` prefix, parameters only: the rope buffers are rebuilt on load):
    4.2 GB. The Qwen3 text encoder is a folder (config + the checkout's configs/qwen3_06b
    tokenizer): hidden width 1024 (the LLM adapter's input), 2 layers, a 64-wide MLP; its
    151936-token embedding is most of its 0.3 GB. The T5 tokenizer is the checkout's
    configs/t5_old (the loader's default). The Qwen-Image VAE has a fixed config too (random,
    fp32, 0.5 GB). `sd_scripts`: the checkout (default $KOHYA_SD_SCRIPTS).
    Measured (2 cores, v0.11.1): 5 min 13 s on a shared machine, du -sh 4.7 GB, peak RSS 5.2 GB.
    """
    import shutil

    import torch

    sd = _sd_scripts(sd_scripts)
    from library import anima_models, anima_utils, qwen_image_autoencoder_kl
    from transformers import Qwen3Config, Qwen3ForCausalLM

    root, model_dir = _model_folder(out_dir, seed)

    # The loader builds the class and then reads the file: the capture stops it before the read.
    dit_kwargs = _loader_kwargs(anima_models, "Anima", lambda: anima_utils.load_anima_model(
        "cpu", str(model_dir / "absent.safetensors"), "torch", False, "cpu", torch.bfloat16))
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: 4.2 GB instead of 8.4 GB
    try:
        dit = anima_models.Anima(**dit_kwargs)
    finally:
        torch.set_default_dtype(default_dtype)
    dit_path = model_dir / "anima_dit.safetensors"
    _save_module(dit_path, {f"net.{k}": v for k, v in dit.named_parameters()})
    del dit

    vae_kwargs = _loader_kwargs(qwen_image_autoencoder_kl, "AutoencoderKLQwenImage",
                                lambda: qwen_image_autoencoder_kl.load_vae(str(model_dir / "absent.safetensors")))
    vae = qwen_image_autoencoder_kl.AutoencoderKLQwenImage(**vae_kwargs)
    vae_path = model_dir / "qwen_image_vae.safetensors"
    _save_module(vae_path, vae.state_dict())  # the loader reads it with strict=True: buffers too
    del vae

    qwen_dir = model_dir / "qwen3"
    # Qwen3-0.6B's config with 2 layers and a narrow MLP (set before construction: the config derives per-layer lists)
    qwen_json = json.loads((sd / "configs" / "qwen3_06b" / "config.json").read_text(encoding="utf-8"))
    qwen_cfg = Qwen3Config(**{**qwen_json, "num_hidden_layers": 2, "max_window_layers": 2, "intermediate_size": 64})
    qwen = Qwen3ForCausalLM(qwen_cfg).to(torch.bfloat16)
    qwen.save_pretrained(str(qwen_dir), safe_serialization=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):  # AutoTokenizer reads the folder
        shutil.copy(sd / "configs" / "qwen3_06b" / name, qwen_dir / name)
    del qwen
    return _write_dataset(root, dit_path, n_images, resolution, "qwen3+t5 (configs/ of sd-scripts)", family="anima",
                          script="anima_train_network.py", models={"qwen3": str(qwen_dir), "vae": str(vae_path)})


#: sd-scripts looks the FLUX.1 T5 tokenizer up under this name in --tokenizer_cache_dir (strategy_flux.T5_XXL_TOKENIZER_ID)
T5_TOKENIZER_DIR_NAME = "google_t5-v1_1-xxl"


def _t5_tensors(config, layout: dict):
    """T5-XXL's encoder tensors in `layout` order with transformers' T5 init, one block alive at a time.

    The shared embedding is yielded under both of its names (`shared.weight`, `encoder.embed_tokens.weight`),
    as T5EncoderModel.state_dict() lists it: the loader ties them through one module anyway.
    """
    from transformers import T5Config, T5EncoderModel
    from transformers.models.t5.modeling_t5 import T5Block

    # 1 block: the embedding, block 0 (the only one with the relative attention bias), the final norm
    outer = T5EncoderModel(T5Config.from_dict({**config.to_dict(), "num_layers": 1}))
    outer_sd = outer.state_dict()
    block_sd, block_i = {}, -1
    for name in layout:
        if not name.startswith("encoder.block."):
            yield name, outer_sd[name]
            continue
        i = int(name.split(".")[2])
        if i != block_i:
            block = outer.encoder.block[0] if i == 0 else T5Block(outer.config, layer_idx=i)
            if i:
                block.apply(outer._init_weights)
            block_sd, block_i = block.state_dict(), i
        yield name, block_sd[name.split(".", 3)[3]]


def _save_t5_tokenizer(sd: Path, tokenizers: Path) -> None:
    """The checkout's configs/t5_old T5 tokenizer where FLUX.1 and SD3 look it up in --tokenizer_cache_dir."""
    from transformers import T5TokenizerFast

    t5_tok_dir = sd / "configs" / "t5_old"
    T5TokenizerFast(vocab_file=str(t5_tok_dir / "spiece.model"), tokenizer_file=str(t5_tok_dir / "tokenizer.json")).save_pretrained(
        str(tokenizers / T5_TOKENIZER_DIR_NAME))


def _save_t5xxl(path: Path, t5_empty) -> None:
    """A complete random T5-XXL encoder (bf16, 9.5 GB) in the layout of `t5_empty` (sd-scripts' loader's empty model),
    streamed to disk: the loaders fill it without strict checking, so a missing layer would stay on the meta device."""
    import torch

    layout = {k: (tuple(v.shape), torch.bfloat16) for k, v in t5_empty.state_dict().items()}
    save_safetensors_streaming(path, layout, _t5_tensors(t5_empty.config, layout))


def build_tiny_flux(
    out_dir: str | os.PathLike,
    n_images: int = 4,
    resolution: int = 64,
    bpe_path: str | os.PathLike | None = None,
    seed: int = 0,
    sd_scripts: str | os.PathLike | None = None,
) -> TinySD:
    """A randomly initialised FLUX.1 [dev] set-up for sd-scripts' flux_train_network.py.

    The DiT is sd-scripts' `flux_models.Flux` with 1 double and 1 single block (the loader counts
    the blocks in the file; everything else is FLUX.1 dev's layout, guidance embedding included):
    0.55 B parameters, bf16, 1.1 GB. The AutoEncoder (fp32), CLIP-L and T5-XXL configs are fixed
    by the loaders, which build them empty and fill them from the file without strict checking,
    so a missing layer would stay on the meta device: T5-XXL is complete (4.76 B parameters, bf16,
    9.5 GB), generated block by block and streamed to disk. Tokenizers in --tokenizer_cache_dir:
    the CLIP one as for SD1.x, T5 from the checkout's configs/t5_old. `sd_scripts`: the checkout
    (default $KOHYA_SD_SCRIPTS).
    Measured (2 cores, v0.11.1): 2 min 3 s, du -sh 11 GB, peak RSS 2.2 GB (streamed).
    """
    from dataclasses import replace

    import torch

    sd = _sd_scripts(sd_scripts)
    from library import flux_models, flux_utils
    from transformers import CLIPTextModel

    root, model_dir = _model_folder(out_dir, seed)
    _, tok_source = build_tokenizer(root / "tokenizers" / TOKENIZER_DIR_NAME, bpe_path)
    _save_t5_tokenizer(sd, root / "tokenizers")

    paths = {name: model_dir / f"{name}.safetensors" for name in ("flux_dit", "clip_l", "t5xxl", "ae")}
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16, as FLUX.1 ships (the AE below excepted)
    try:
        dit = flux_models.Flux(replace(flux_models.configs[flux_utils.MODEL_NAME_DEV].params, depth=1, depth_single_blocks=1))
        _save_module(paths["flux_dit"], dit.state_dict())
        del dit
        # Given a state dict, the text-encoder loaders read no file: they return the empty model of their fixed config
        # (quietly: they would log every key of the empty dict as missing).
        quiet = logging.getLogger(flux_utils.__name__)
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            clip_empty = flux_utils.load_clip_l(None, torch.bfloat16, "cpu", state_dict={})
            t5_empty = flux_utils.load_t5xxl(None, torch.bfloat16, "cpu", state_dict={})
        finally:
            quiet.setLevel(level)
        clip = CLIPTextModel(clip_empty.config)
        _save_module(paths["clip_l"], clip.state_dict())
        del clip
        _save_t5xxl(paths["t5xxl"], t5_empty)
    finally:
        torch.set_default_dtype(default_dtype)
    ae = flux_models.AutoEncoder(flux_models.configs[flux_utils.MODEL_NAME_DEV].ae_params)
    _save_module(paths["ae"], ae.state_dict())
    return _write_dataset(root, paths["flux_dit"], n_images, resolution, tok_source, family="flux", script="flux_train_network.py",
                          models={"clip_l": str(paths["clip_l"]), "t5xxl": str(paths["t5xxl"]), "ae": str(paths["ae"])})


def build_tiny_sd3(
    out_dir: str | os.PathLike,
    n_images: int = 4,
    resolution: int = 64,
    bpe_path: str | os.PathLike | None = None,
    seed: int = 0,
    sd_scripts: str | os.PathLike | None = None,
) -> TinySD:
    """A randomly initialised SD3.5 set-up for sd-scripts' sd3_train_network.py.

    sd-scripts reads the MMDiT's depth from the file (`x_embedder` rows / 64, which also sets the
    width and head count), so the MMDiT is SD3.5 Large's layout (RMS q/k norm, no x-block
    self-attention, 192 px position grid, 2048-wide pooled and 4096-wide context inputs) at depth 2:
    12 M parameters. It shares one bf16 file with the VAE (`first_stage_model.`), as the released
    single files do. CLIP-L, CLIP-G (32 layers, 1280 wide) and T5-XXL have fixed configs in the
    loaders and are complete, random, bf16, in their own files (--clip_l/--clip_g/--t5xxl), T5
    streamed to disk. Tokenizers in --tokenizer_cache_dir: the CLIP one under the names of CLIP-L
    and CLIP-G, T5 from the checkout's configs/t5_old. `sd_scripts`: the checkout (default
    $KOHYA_SD_SCRIPTS).
    Measured (2 cores, v0.11.1): 2 min 41 s on a shared machine, du -sh 11 GB, peak RSS 2.3 GB (streamed).
    """
    import torch

    sd = _sd_scripts(sd_scripts)
    from library import sd3_models, sd3_utils
    from transformers import CLIPTextModelWithProjection

    root, model_dir = _model_folder(out_dir, seed)
    _, tok_source = build_tokenizer(root / "tokenizers" / TOKENIZER_DIR_NAME, bpe_path)
    build_tokenizer(root / "tokenizers" / SDXL_TOKENIZER2_DIR_NAME, bpe_path)  # CLIP-G's id, the same vocabulary
    _save_t5_tokenizer(sd, root / "tokenizers")

    paths = {name: model_dir / f"{name}.safetensors" for name in ("sd3", "clip_l", "clip_g", "t5xxl")}
    depth = 2
    params = sd3_models.SD3Params(patch_size=2, depth=depth, num_patches=192 * 192, pos_embed_max_size=192, adm_in_channels=2048,
                                  qk_norm="rms", x_block_self_attn_layers=[], context_embedder_in_features=4096,
                                  context_embedder_out_features=64 * depth, model_type="5-large")
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        mmdit = sd3_models.create_sd3_mmdit(params)
        named = {f"model.diffusion_model.{k}": v for k, v in mmdit.state_dict().items()}
        named.update({f"first_stage_model.{k}": v.to(torch.bfloat16) for k, v in sd3_models.SDVAE().state_dict().items()})
        _save_module(paths["sd3"], named)
        del mmdit, named
        # Given a checkpoint that holds a text encoder, the CLIP loaders build their fixed config and fill it with what
        # the checkpoint has: one tensor is enough to get the (otherwise empty) model and so its config.
        quiet = [logging.getLogger(n) for n in (sd3_utils.__name__, sd3_utils.flux_utils_load_t5xxl.__module__)]
        levels = [q.level for q in quiet]
        for q in quiet:
            q.setLevel(logging.WARNING)
        try:
            for name, width, load in (("clip_l", 768, sd3_utils.load_clip_l), ("clip_g", 1280, sd3_utils.load_clip_g)):
                key = f"text_encoders.{name}.transformer.text_model.embeddings.position_embedding.weight"
                empty = load(None, torch.bfloat16, "cpu", state_dict={key: torch.zeros(77, width)})
                clip = CLIPTextModelWithProjection(empty.config)
                _save_module(paths[name], clip.state_dict())
                del clip, empty
            t5_empty = sd3_utils.flux_utils_load_t5xxl(None, torch.bfloat16, "cpu", state_dict={})
        finally:
            for q, level in zip(quiet, levels):
                q.setLevel(level)
        _save_t5xxl(paths["t5xxl"], t5_empty)
    finally:
        torch.set_default_dtype(default_dtype)
    return _write_dataset(root, paths["sd3"], n_images, resolution, tok_source, family="sd3", script="sd3_train_network.py",
                          models={name: str(paths[name]) for name in ("clip_l", "clip_g", "t5xxl")})


#: what stands in for the gated google/gemma-2-2b tokenizer in the offline HF cache (any fixed 40-hex revision)
GEMMA_SUBSTITUTE_REVISION = "6b6f6879612d6578742d67656d6d612d73756273"


def _save_gemma_substitute_tokenizer(sd: Path, cache_dir: Path) -> None:
    """A GemmaTokenizerFast under google/gemma-2-2b in the Hugging Face cache layout of `cache_dir`.

    sd-scripts' Lumina loads its tokenizer by that (gated) Hub id with --tokenizer_cache_dir as the cache,
    and no Gemma vocabulary can be had offline. This one is Gemma's class and special-token scheme
    (<pad> 0, </s> as eos 1, a <bos> prefix, right padding) over the checkout's T5 vocabulary: every id
    is below Gemma2's 256000-row embedding, which is all random weights need of a vocabulary.
    """
    from transformers import GemmaTokenizerFast

    repo = cache_dir / "models--google--gemma-2-2b"
    tok = GemmaTokenizerFast(tokenizer_file=str(sd / "configs" / "t5_old" / "tokenizer.json"),
                             bos_token="<bos>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tok.save_pretrained(str(repo / "snapshots" / GEMMA_SUBSTITUTE_REVISION))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(GEMMA_SUBSTITUTE_REVISION, encoding="utf-8")


def build_tiny_lumina(
    out_dir: str | os.PathLike,
    n_images: int = 4,
    resolution: int = 64,
    bpe_path: str | os.PathLike | None = None,
    seed: int = 0,
    sd_scripts: str | os.PathLike | None = None,
) -> TinySD:
    """A randomly initialised Lumina Image 2.0 set-up for sd-scripts' lumina_train_network.py.

    Nothing here is read from the files: the NextDiT (2B config, 2.6 B parameters), Gemma2-2B
    (26 layers, 2304 wide, 256000-token embedding) and the FLUX AutoEncoder are sd-scripts' fixed
    configs, built complete and random, NextDiT and Gemma2 in bf16 (5.2 GB each), the AE in fp32.
    The gated Gemma tokenizer is replaced by a substitute (_save_gemma_substitute_tokenizer) in
    --tokenizer_cache_dir. `sd_scripts`: the checkout (default $KOHYA_SD_SCRIPTS).
    Measured (2 cores, v0.11.1): 3 min 16 s on a shared machine, du -sh 11 GB, peak RSS 5.9 GB.
    """
    import torch

    sd = _sd_scripts(sd_scripts)
    from library import flux_models, lumina_models, lumina_util
    from transformers import Gemma2Model

    root, model_dir = _model_folder(out_dir, seed)
    _save_gemma_substitute_tokenizer(sd, root / "tokenizers")
    paths = {name: model_dir / f"{name}.safetensors" for name in ("lumina", "gemma2", "ae")}
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        dit = lumina_models.NextDiT_2B_GQA_patch2_Adaln_Refiner()
        _save_module(paths["lumina"], dit.state_dict())
        del dit
        quiet = logging.getLogger(lumina_util.__name__)  # given an empty state dict it would log every key as missing
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            config = lumina_util.load_gemma2(None, torch.bfloat16, "cpu", state_dict={}).config  # the loader's literal config
        finally:
            quiet.setLevel(level)
        gemma2 = Gemma2Model._from_config(config, torch_dtype=torch.bfloat16)
        _save_module(paths["gemma2"], gemma2.state_dict())
        del gemma2
    finally:
        torch.set_default_dtype(default_dtype)
    _save_module(paths["ae"], flux_models.AutoEncoder(flux_models.configs["schnell"].ae_params).state_dict())
    return _write_dataset(root, paths["lumina"], n_images, resolution, "gemma2 substitute (t5 vocabulary)", family="lumina",
                          script="lumina_train_network.py", models={"gemma2": str(paths["gemma2"]), "ae": str(paths["ae"])})


def _write_dataset(root: Path, model_dir: Path, n_images: int, resolution: int, tok_source: str, **kind) -> TinySD:
    """The training folder, prompt file and tiny_sd.json shared by every family's set-up."""
    train_dir = root / "train"
    sub = train_dir / "1_tadne"  # kohya's "<repeats>_<name>" folder
    sub.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(_dataset_images(n_images, resolution)):
        img.save(sub / f"{i:02d}.png")
        (sub / f"{i:02d}.txt").write_text("tadne, 1girl, portrait, anime\n", encoding="utf-8")
    prompts = root / "prompts.txt"
    prompts.write_text(
        f"tadne, 1girl, portrait --w {resolution} --h {resolution} --d 1 --s 2 --l 7\n"
        f"tadne, 1girl, smile --w {resolution} --h {resolution} --d 2 --s 2 --l 7\n",
        encoding="utf-8",
    )
    tiny = TinySD(root=str(root), model_dir=str(model_dir), tokenizer_cache_dir=str(root / "tokenizers"),
                  train_data_dir=str(train_dir), prompts_file=str(prompts), resolution=resolution, n_images=n_images,
                  tokenizer_source=tok_source, **kind)
    (root / "tiny_sd.json").write_text(json.dumps(asdict(tiny), indent=2), encoding="utf-8")
    return tiny


def load_tiny_sd(out_dir: str | os.PathLike) -> TinySD:
    """The TinySD written earlier by build_tiny_sd15 into `out_dir` (reads tiny_sd.json)."""
    path = Path(out_dir) / "tiny_sd.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build it first with `<sd-scripts venv>/bin/python tests/sd_tiny_model.py {out_dir}`")
    return TinySD(**json.loads(path.read_text(encoding="utf-8")))


#: families built from sd-scripts' own classes (their builders take `sd_scripts`)
DIT_FAMILIES = ("anima", "flux", "lumina", "sd3")
BUILDERS = {"sd15": build_tiny_sd15, "sdxl": build_tiny_sdxl, "anima": build_tiny_anima, "flux": build_tiny_flux, "sd3": build_tiny_sd3,
            "lumina": build_tiny_lumina}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--bpe", help="CLIP bpe_simple_vocab_16e6.txt.gz or an open_clip_torch wheel")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="max_train_steps in the printed command")
    ap.add_argument("--family", choices=sorted(BUILDERS), default="sd15")
    ap.add_argument("--sd_scripts", help="sd-scripts checkout for the DiT families (default $KOHYA_SD_SCRIPTS)")
    args = ap.parse_args(argv)
    extra = {"sd_scripts": args.sd_scripts} if args.family in DIT_FAMILIES else {}
    tiny = BUILDERS[args.family](args.out_dir, n_images=args.images, resolution=args.resolution, bpe_path=args.bpe, **extra)
    print(json.dumps(asdict(tiny), indent=2))
    cmd = [tiny.script, *tiny.train_network_args(Path(tiny.root) / "out", steps=args.steps)]
    print(" ".join(cmd), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
