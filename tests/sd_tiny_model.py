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
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import zipfile
from dataclasses import asdict, dataclass
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
    tokenizer_source: str  # "clip-bpe" (real CLIP vocab) or "byte-level" (no BPE file found)
    family: str = "sd15"  # sd15 | sdxl
    script: str = "train_network.py"  # the sd-scripts script that trains this family

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
            *FAMILY_ARGS.get(self.family, []),
        ]


#: each family's usual LoRA options (docs/training.md, families), replacing the SD1.x defaults above where both are given
FAMILY_ARGS: dict[str, list[str]] = {
    # the issue-16 recipe: cached latents and text-encoder outputs, U-Net only, bf16 throughout, checkpointing
    "sdxl": ["--cache_latents", "--cache_text_encoder_outputs", "--network_train_unet_only", "--mixed_precision", "bf16",
             "--full_bf16", "--gradient_checkpointing", "--save_precision", "bf16"],
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


BUILDERS = {"sd15": build_tiny_sd15, "sdxl": build_tiny_sdxl}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--bpe", help="CLIP bpe_simple_vocab_16e6.txt.gz or an open_clip_torch wheel")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="max_train_steps in the printed command")
    ap.add_argument("--family", choices=sorted(BUILDERS), default="sd15")
    args = ap.parse_args(argv)
    tiny = BUILDERS[args.family](args.out_dir, n_images=args.images, resolution=args.resolution, bpe_path=args.bpe)
    print(json.dumps(asdict(tiny), indent=2))
    cmd = [tiny.script, *tiny.train_network_args(Path(tiny.root) / "out", steps=args.steps)]
    print(" ".join(cmd), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
