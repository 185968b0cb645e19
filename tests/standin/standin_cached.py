"""A stand-in family that caches the text-encoder outputs of the sample prompts at setup, as
FLUX, SD3, Lumina, HunyuanImage and Anima do with --cache_text_encoder_outputs (e.g.
flux_train_network.py L255-272): it can then render only prompts that were cached."""

from __future__ import annotations

from library import train_util  # the harness's shim of standin_util.py
from standin_loop import NetworkTrainer, _TinyModel


class CachedPromptsTrainer(NetworkTrainer):
    def __init__(self):
        super().__init__()
        self.sample_prompts_te_outputs = None

    def cache_text_encoder_outputs_if_needed(self, args, accelerator, unet, vae, text_encoders, dataset, weight_dtype):
        if args.sample_prompts is not None:
            cache = {}
            for d in train_util.load_prompts(args.sample_prompts):
                for text in (d.get("prompt", ""), d.get("negative_prompt", "")):
                    cache.setdefault(text, ("encoded", text))
            self.sample_prompts_te_outputs = cache
            print(f"standin: cached text-encoder outputs of {len(cache)} prompt texts", flush=True)

    def is_text_encoder_not_needed_for_training(self, args):
        # FLUX/SD3/Lumina/HunyuanImage/Anima override it so (e.g. flux_train_network.py L464 at 6721028c)
        return args.cache_text_encoder_outputs and args.network_train_unet_only

    def sample_images(self, accelerator, args, epoch, global_step, device, vae, tokenizers, text_encoder, unet):
        train_util.sample_images(accelerator, args, epoch, global_step, device, vae, tokenizers[0], text_encoder, unet,
                                 sample_prompts_te_outputs=self.sample_prompts_te_outputs)


class LazyDiTTrainer(CachedPromptsTrainer):
    """Anima and HunyuanImage load their DiT only after the text-encoder outputs are cached: the model loader
    returns None for it, so ``cache_text_encoder_outputs_if_needed`` gets None, and ``load_unet_lazily`` brings it
    (anima_train_network.py L98-115, train_network.py L1044-1046 at 6721028c)."""

    def load_target_model(self, args, weight_dtype, accelerator):
        version, text_encoder, vae, _unet = super().load_target_model(args, weight_dtype, accelerator)
        return version, text_encoder, vae, None

    def load_unet_lazily(self, args, weight_dtype, accelerator, text_encoders):
        return _TinyModel(), text_encoders
