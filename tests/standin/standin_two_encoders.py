"""A stand-in family with two text encoders, as SDXL has (CLIP-L and OpenCLIP-G): its model
loader returns them as a list (sdxl_train_network.py L70 at 6721028c), and the base trainer then
hands that list, not one module, to ``sample_images``, the network's ``create_network`` /
``apply_to`` / ``on_epoch_start`` and ``on_step_start`` (train_network.py L1015, L1292-1299). Like
SDXL it encodes the sample prompts when it samples, so its text encoders are never freed."""

from __future__ import annotations

from library import train_util  # the harness's shim of standin_util.py
from standin_loop import NetworkTrainer, _TinyModel, _TokenizeStrategy


class TwoEncoderTrainer(NetworkTrainer):
    def __init__(self):
        super().__init__()
        self.is_sdxl = True

    def load_target_model(self, args, weight_dtype, accelerator):
        import torch

        torch.manual_seed(args.seed or 0)
        return "standin-two-encoders", [_TinyModel(), _TinyModel()], _TinyModel(), _TinyModel()

    def get_tokenizers(self, tokenize_strategy: _TokenizeStrategy):
        return [tokenize_strategy.tokenizer, tokenize_strategy.tokenizer]

    def sample_images(self, accelerator, args, epoch, global_step, device, vae, tokenizer, text_encoder, unet):
        # SDXL's sampler takes both tokenizers and both encoders (sdxl_train_network.py L165-166)
        train_util.sample_images(accelerator, args, epoch, global_step, device, vae, tokenizer, text_encoder, unet)
