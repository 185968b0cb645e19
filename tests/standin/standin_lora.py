"""A tiny LoRA-like network with sd-scripts' LoRANetwork surface (save_weights, on_epoch_start, ...)."""

from __future__ import annotations

import os

import torch


class StandinLoRANetwork(torch.nn.Module):
    def __init__(self, dim: int = 4, width: int = 8):
        super().__init__()
        self.down = torch.nn.Linear(width, dim, bias=False)
        self.up = torch.nn.Linear(dim, width, bias=False)
        torch.nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.down(x))

    def apply_to(self, text_encoder, unet, apply_text_encoder=True, apply_unet=True) -> None:
        pass

    def on_epoch_start(self, text_encoder, unet) -> None:
        self.train()

    def get_trainable_params(self):
        return list(self.parameters())

    def prepare_optimizer_params(self, text_encoder_lr, unet_lr, default_lr):
        return [{"params": list(self.parameters()), "lr": default_lr}], ["unet"]

    def load_weights(self, file):
        """``--network_weights``: the saved state back in (strict=False, as LoRANetwork loads)."""
        return self.load_state_dict(_read_state(file), strict=False)

    def save_weights(self, file, dtype, metadata) -> None:
        if metadata is not None and len(metadata) == 0:
            metadata = None
        state = {k: (v.detach().clone().to("cpu", dtype) if dtype is not None else v.detach().clone().to("cpu")) for k, v in self.state_dict().items()}
        if os.path.splitext(file)[1] == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, file, metadata)
        else:
            torch.save(state, file)


def create_network(multiplier, network_dim, network_alpha, vae, text_encoder, unet, neuron_dropout=None, **kwargs):
    return StandinLoRANetwork(dim=int(network_dim or 4))


def _read_state(file) -> dict:
    if os.path.splitext(file)[1] == ".safetensors":
        from safetensors.torch import load_file

        return load_file(file)
    return torch.load(file, map_location="cpu")


def create_network_from_weights(multiplier, file, vae, text_encoder, unet, weights_sd=None, for_inference=False, **kwargs):
    """(network, state) with the rank read from the saved ``down`` weight (``--dim_from_weights``)."""
    if weights_sd is None:
        weights_sd = _read_state(file)
    return StandinLoRANetwork(dim=int(weights_sd["down.weight"].shape[0])), weights_sd
