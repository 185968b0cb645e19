"""Stand-in for sd-scripts v0.10.1 train_network.py (CI only; written from scratch).

Same hook names, signatures and order as ``NetworkTrainer.train`` there; tiny torch
modules instead of Stable Diffusion. See README.md in this folder.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import random
import time

import torch

from library import train_util  # the shim of standin_util.py the harness writes (kohya imports it under this name)


class _TinyModel(torch.nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.proj = torch.nn.Linear(width, width)


class _Tokenizer:
    model_max_length = 77


class _TokenizeStrategy:
    def __init__(self):
        self.tokenizer = _Tokenizer()


class _Dataset(torch.utils.data.Dataset):
    """One item per training image x repeats (kohya `N_name` folders), as fixed random vectors."""

    def __init__(self, train_data_dir: str, width: int = 8):
        items = []
        for sub in sorted(os.listdir(train_data_dir)):
            d = os.path.join(train_data_dir, sub)
            if not os.path.isdir(d) or "_" not in sub or not sub.split("_", 1)[0].isdigit():
                continue
            repeats = int(sub.split("_", 1)[0])
            imgs = sorted(f for f in os.listdir(d) if f.lower().endswith((".png", ".jpg", ".jpeg", ".webp")))
            items += [os.path.join(d, f) for f in imgs] * repeats
        self.items = items
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(len(items), width, generator=g)
        self.y = torch.randn(len(items), width, generator=g)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class NetworkTrainer:
    def __init__(self):
        self.vae_scale_factor = 0.18215
        self.is_sdxl = False

    def generate_step_logs(self, args, current_loss, avr_loss, lr_scheduler, lr_descriptions, optimizer=None):
        logs = {"loss/current": current_loss, "loss/average": avr_loss}
        for i, lr in enumerate(lr_scheduler.get_last_lr()):
            logs[f"lr/{lr_descriptions[i] if lr_descriptions else 'unet'}"] = float(lr)
        return logs

    def step_logging(self, accelerator, logs: dict, global_step: int, epoch: int):
        self.accelerator_logging(accelerator, logs, global_step, global_step, epoch)

    def epoch_logging(self, accelerator, logs: dict, global_step: int, epoch: int):
        self.accelerator_logging(accelerator, logs, epoch, global_step, epoch)

    def accelerator_logging(self, accelerator, logs: dict, step_value: int, global_step: int, epoch: int, val_step=None):
        """TensorBoard at step_value; wandb without a step, global_step/epoch in the dict."""
        tb, wb, others = None, None, []
        for t in accelerator.trackers:
            if t.name == "tensorboard":
                tb = accelerator.get_tracker("tensorboard")
            elif t.name == "wandb":
                wb = accelerator.get_tracker("wandb")
            else:
                others.append(accelerator.get_tracker(t.name))
        if tb is not None:
            tb.log(logs, step=step_value)
        if wb is not None:
            logs["global_step"] = global_step
            logs["epoch"] = epoch
            if val_step is not None:
                logs["val_step"] = val_step
            wb.log(logs)
        for t in others:
            t.log(logs, step=step_value)

    def load_target_model(self, args, weight_dtype, accelerator):
        torch.manual_seed(args.seed or 0)
        return "standin-v1", _TinyModel(), _TinyModel(), _TinyModel()

    def load_unet_lazily(self, args, weight_dtype, accelerator, text_encoders):
        raise NotImplementedError()  # as the base trainer: only the families that load lazily override it

    def get_tokenize_strategy(self, args):
        return _TokenizeStrategy()

    def get_tokenizers(self, tokenize_strategy):
        return [tokenize_strategy.tokenizer]

    def all_reduce_network(self, accelerator, network):
        for param in network.parameters():
            if param.grad is not None:
                param.grad = accelerator.reduce(param.grad, reduction="mean")

    def sample_images(self, accelerator, args, epoch, global_step, device, vae, tokenizers, text_encoder, unet):
        train_util.sample_images(accelerator, args, epoch, global_step, device, vae, tokenizers[0], text_encoder, unet)

    def cache_text_encoder_outputs_if_needed(self, args, accelerator, unet, vae, text_encoders, dataset, weight_dtype):
        for t_enc in text_encoders:
            t_enc.to(accelerator.device, dtype=weight_dtype)

    def post_process_network(self, args, accelerator, network, text_encoders, unet):
        pass

    def on_step_start(self, args, accelerator, network, text_encoders, unet, batch, weight_dtype, is_train=True):
        pass

    def is_text_encoder_not_needed_for_training(self, args):
        return False  # SD1.x and SDXL keep their text encoders: they encode the sample prompts when they sample

    def on_validation_step_end(self, args, accelerator, network, text_encoders, unet, batch, weight_dtype):
        pass

    def process_batch(self, batch, text_encoders, unet, network, vae, noise_scheduler, vae_dtype, weight_dtype, accelerator, args,
                      text_encoding_strategy, tokenize_strategy, is_train=True, train_text_encoder=True, train_unet=True):
        with torch.set_grad_enabled(is_train):
            pred = network(batch["x"])
            return torch.nn.functional.mse_loss(pred, batch["y"])

    def train(self, args):
        session_id = random.randint(0, 2**32)
        training_started_at = time.time()
        if args.seed is not None:
            torch.manual_seed(args.seed)
            random.seed(args.seed)

        dataset = _Dataset(args.train_data_dir)
        # --validation_split: the last share of the items (sd-scripts draws them with --validation_seed)
        n_val = math.ceil(len(dataset) * args.validation_split) if args.validation_split else 0
        val_dataset = torch.utils.data.Subset(dataset, range(len(dataset) - n_val, len(dataset)))
        if n_val:
            dataset = torch.utils.data.Subset(dataset, range(len(dataset) - n_val))
        accelerator = train_util.prepare_accelerator(args)
        is_main_process = accelerator.is_main_process
        weight_dtype = torch.float32
        save_dtype = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(args.save_precision)  # prepare_dtype

        model_version, text_encoder, vae, unet = self.load_target_model(args, weight_dtype, accelerator)
        tokenize_strategy = self.get_tokenize_strategy(args)
        tokenizers = self.get_tokenizers(tokenize_strategy)
        # one module (SD1.x) or a list of them (SDXL's two): the hooks get what the loader returned (L1015)
        text_encoders = text_encoder if isinstance(text_encoder, list) else [text_encoder]
        self.cache_text_encoder_outputs_if_needed(args, accelerator, unet, vae, text_encoders, dataset, weight_dtype)
        if unet is None:  # a family that loads its DiT after caching (Anima, HunyuanImage; L1044-1046 at 6721028c)
            unet, text_encoders = self.load_unet_lazily(args, weight_dtype, accelerator, text_encoders)

        # the network module by its dotted name (train_network.py L641-644); the shim's folder is
        # already on sys.path, as sd-scripts' own folder is there
        accelerator.print("import network module:", args.network_module)
        network_module = importlib.import_module(args.network_module)

        # --network_args key=value items become keyword arguments; LyCORIS reads "dropout" (L663-697)
        net_kwargs = {}
        for item in args.network_args or []:
            key, value = item.split("=", 1)
            net_kwargs[key] = value
        if args.dim_from_weights:
            network, _ = network_module.create_network_from_weights(1, args.network_weights, vae, text_encoder, unet, **net_kwargs)
        else:
            if "dropout" not in net_kwargs:
                net_kwargs["dropout"] = args.network_dropout
            network = network_module.create_network(1.0, args.network_dim, args.network_alpha, vae, text_encoder, unet,
                                                    neuron_dropout=args.network_dropout, **net_kwargs)
        if network is None:
            return
        if hasattr(network, "prepare_network"):
            network.prepare_network(args)
        self.post_process_network(args, accelerator, network, text_encoders, unet)
        network.apply_to(text_encoder, unet, True, True)
        if args.network_weights is not None:
            info = network.load_weights(args.network_weights)
            accelerator.print(f"load network weights from {args.network_weights}: {info}")

        params, lr_descriptions = network.prepare_optimizer_params(args.text_encoder_lr, args.unet_lr, args.learning_rate)
        optimizer = torch.optim.AdamW(params, lr=args.learning_rate)
        train_dataloader = torch.utils.data.DataLoader(dataset, batch_size=args.train_batch_size, shuffle=False)
        val_dataloader = torch.utils.data.DataLoader(val_dataset, batch_size=args.train_batch_size, shuffle=False)
        scripted_val = [float(v) for v in os.environ.get("FAKE_VAL_LOSSES", "").split(",") if v]  # tests script the curve
        if args.max_train_epochs is not None:
            args.max_train_steps = args.max_train_epochs * math.ceil(len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        network, optimizer, train_dataloader, val_dataloader, lr_scheduler = accelerator.prepare(
            network, optimizer, train_dataloader, val_dataloader, lr_scheduler)
        unet.to(accelerator.device)

        # kohya's train_state.json rides along with every saved state (train_network.py L930-972)
        current_epoch, current_step = [0], [0]

        def save_model_hook(models, weights, output_dir):
            if accelerator.is_main_process:
                for i in reversed(range(len(models))):
                    if not isinstance(models[i], type(accelerator.unwrap_model(network))) and len(weights) > i:
                        weights.pop(i)
            with open(os.path.join(output_dir, "train_state.json"), "w", encoding="utf-8") as f:
                json.dump({"current_epoch": current_epoch[0], "current_step": current_step[0] + 1}, f)

        steps_from_state = None

        def load_model_hook(models, input_dir):
            nonlocal steps_from_state
            for i in reversed(range(len(models))):
                if not isinstance(models[i], type(accelerator.unwrap_model(network))):
                    models.pop(i)
            state_file = os.path.join(input_dir, "train_state.json")
            if os.path.exists(state_file):
                with open(state_file, encoding="utf-8") as f:
                    steps_from_state = json.load(f)["current_step"]

        accelerator.register_save_state_pre_hook(save_model_hook)
        accelerator.register_load_state_pre_hook(load_model_hook)
        train_util.resume_from_local_or_hf_if_specified(accelerator, args)

        num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
        num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)
        if args.save_n_epoch_ratio is not None and args.save_n_epoch_ratio > 0:
            args.save_every_n_epochs = math.floor(num_train_epochs / args.save_n_epoch_ratio) or 1

        metadata = {
            "ss_session_id": str(session_id), "ss_training_started_at": str(training_started_at),
            "ss_output_name": str(args.output_name), "ss_learning_rate": str(args.learning_rate),
            "ss_num_train_images": str(len(dataset)), "ss_max_train_steps": str(args.max_train_steps),
            "ss_network_module": args.network_module, "ss_network_dim": str(args.network_dim),
            "ss_base_model_version": model_version,
        }
        if args.network_args:  # the kwargs as passed, dropout included (L1203-1204)
            metadata["ss_network_args"] = json.dumps(net_kwargs)
        minimum_metadata = {k: metadata[k] for k in ("ss_network_module", "ss_network_dim", "ss_base_model_version")}

        # on --resume (without --skip_until_initial_step) kohya skips whole epochs and restarts
        # global_step at 0 (L1232-1273)
        initial_step = steps_from_state or 0
        epoch_to_start = initial_step // num_update_steps_per_epoch if initial_step > 0 else 0
        global_step = 0
        train_util.init_trackers(accelerator, args, "network_train")
        losses: list[float] = []

        def save_model(ckpt_name, unwrapped_nw, steps, epoch_no, force_sync_upload=False):
            os.makedirs(args.output_dir, exist_ok=True)
            ckpt_file = os.path.join(args.output_dir, ckpt_name)
            accelerator.print(f"\nsaving checkpoint: {ckpt_file}")
            metadata["ss_training_finished_at"] = str(time.time())
            metadata["ss_steps"] = str(steps)
            metadata["ss_epoch"] = str(epoch_no)
            unwrapped_nw.save_weights(ckpt_file, save_dtype, minimum_metadata if args.no_metadata else metadata)

        def remove_model(old_ckpt_name):
            old = os.path.join(args.output_dir, old_ckpt_name)
            if os.path.exists(old):
                accelerator.print(f"removing old checkpoint: {old}")
                os.remove(old)

        net = accelerator.unwrap_model(network)
        on_step_start_for_network = getattr(net, "on_step_start", lambda *a, **k: None)
        if self.is_text_encoder_not_needed_for_training(args):  # train_network.py L1493: freed, the hooks then get None
            text_encoders, text_encoder = [], None
        n_validations = [0]

        def validate(mode, epoch):
            """One validation pass as train_network.py runs it (v0.10 L1534-1606, v0.11 _run_validation_loop): the
            network in eval mode, 4 timesteps per batch, on_validation_step_end after each, the average logged by
            step_logging (step) or epoch_logging (epoch), the network back in train mode."""
            accelerator.unwrap_model(network).eval()
            losses_val = []
            for batch in val_dataloader:
                for _timestep in range(4):
                    loss_v = self.process_batch(batch, text_encoders, unet, network, vae, None, weight_dtype, weight_dtype,
                                                accelerator, args, None, tokenize_strategy, is_train=False)
                    losses_val.append(loss_v.item())
                    self.on_validation_step_end(args, accelerator, network, text_encoders, unet, batch, weight_dtype)
            avg = sum(losses_val) / max(1, len(losses_val))
            if n_validations[0] < len(scripted_val):
                avg = scripted_val[n_validations[0]]
            n_validations[0] += 1
            if is_tracking:
                train_avg = sum(losses[-len(train_dataloader):]) / max(1, len(losses[-len(train_dataloader):]))
                logs = {f"loss/validation/{mode}_average": avg, f"loss/validation/{mode}_divergence": avg - train_avg}
                (self.step_logging if mode == "step" else self.epoch_logging)(accelerator, logs, global_step, epoch + 1)
            accelerator.unwrap_model(network).train()

        # --sample_at_first, then one empty log so wandb commits the samples
        self.sample_images(accelerator, args, 0, global_step, accelerator.device, vae, tokenizers, text_encoder, unet)
        is_tracking = len(accelerator.trackers) > 0
        if is_tracking:
            accelerator.log({}, step=0)

        for epoch in range(epoch_to_start, num_train_epochs):
            accelerator.print(f"\nepoch {epoch + 1}/{num_train_epochs}\n")
            current_epoch[0] = epoch + 1
            metadata["ss_epoch"] = str(epoch + 1)
            accelerator.unwrap_model(network).on_epoch_start(text_encoder, unet)

            for step, batch in enumerate(train_dataloader):
                current_step[0] = global_step
                with accelerator.accumulate(network):
                    on_step_start_for_network(text_encoder, unet)
                    self.on_step_start(args, accelerator, network, text_encoders, unet, batch, weight_dtype, is_train=True)
                    loss = self.process_batch(batch, text_encoders, unet, network, vae, None, weight_dtype, weight_dtype,
                                              accelerator, args, None, tokenize_strategy, is_train=True)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        self.all_reduce_network(accelerator, network)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)

                if accelerator.sync_gradients:
                    global_step += 1
                    self.sample_images(accelerator, args, None, global_step, accelerator.device, vae, tokenizers, text_encoder, unet)
                    if args.save_every_n_steps is not None and global_step % args.save_every_n_steps == 0:
                        accelerator.wait_for_everyone()
                        if accelerator.is_main_process:
                            save_model(train_util.get_step_ckpt_name(args, "." + args.save_model_as, global_step),
                                       accelerator.unwrap_model(network), global_step, epoch)
                            if args.save_state:
                                train_util.save_and_remove_state_stepwise(args, accelerator, global_step)
                            remove_no = train_util.get_remove_step_no(args, global_step)
                            if remove_no is not None:
                                remove_model(train_util.get_step_ckpt_name(args, "." + args.save_model_as, remove_no))

                current_loss = loss.detach().item()
                losses.append(current_loss)
                avr_loss = sum(losses[-len(train_dataloader):]) / len(losses[-len(train_dataloader):])
                if is_tracking:
                    logs = self.generate_step_logs(args, current_loss, avr_loss, lr_scheduler, lr_descriptions, optimizer)
                    self.step_logging(accelerator, logs, global_step, epoch + 1)

                if accelerator.sync_gradients and n_val and args.validate_every_n_steps and global_step % args.validate_every_n_steps == 0:
                    validate("step", epoch)

                if global_step >= args.max_train_steps:
                    break

            if n_val and (args.validate_every_n_epochs is None or (epoch + 1) % args.validate_every_n_epochs == 0):
                validate("epoch", epoch)
            if is_tracking:
                self.epoch_logging(accelerator, {"loss/epoch_average": sum(losses) / max(1, len(losses))}, global_step, epoch + 1)
            accelerator.wait_for_everyone()

            if args.save_every_n_epochs is not None:
                saving = (epoch + 1) % args.save_every_n_epochs == 0 and (epoch + 1) < num_train_epochs
                if is_main_process and saving:
                    save_model(train_util.get_epoch_ckpt_name(args, "." + args.save_model_as, epoch + 1),
                               accelerator.unwrap_model(network), global_step, epoch + 1)
                    remove_no = train_util.get_remove_epoch_no(args, epoch + 1)
                    if remove_no is not None:
                        remove_model(train_util.get_epoch_ckpt_name(args, "." + args.save_model_as, remove_no))
                    if args.save_state:
                        train_util.save_and_remove_state_on_epoch_end(args, accelerator, epoch + 1)

            self.sample_images(accelerator, args, epoch + 1, global_step, accelerator.device, vae, tokenizers, text_encoder, unet)

        metadata["ss_training_finished_at"] = str(time.time())
        if is_main_process:
            network = accelerator.unwrap_model(network)
        accelerator.end_training()
        if is_main_process and (args.save_state or args.save_state_on_train_end):
            train_util.save_state_on_train_end(args, accelerator)
        if is_main_process:
            save_model(train_util.get_last_ckpt_name(args, "." + args.save_model_as), network, global_step, num_train_epochs, force_sync_upload=True)
            print("model saved.", flush=True)


def setup_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    a = p.add_argument
    a("--config_file", type=str, default=None)
    a("--output_config", action="store_true")
    a("--pretrained_model_name_or_path", type=str, default=None)
    a("--tokenizer_cache_dir", type=str, default=None)
    a("--train_data_dir", type=str, default=None)
    a("--dataset_config", type=str, default=None)
    a("--reg_data_dir", type=str, default=None)
    a("--caption_extension", type=str, default=".caption")
    a("--resolution", type=str, default=None)
    a("--enable_bucket", action="store_true")
    a("--output_dir", type=str, default=None)
    a("--output_name", type=str, default=None)
    a("--save_model_as", type=str, default="safetensors", choices=[None, "ckpt", "pt", "safetensors"])
    a("--save_precision", type=str, default=None, choices=[None, "float", "fp16", "bf16"])
    a("--save_every_n_steps", type=int, default=None)
    a("--save_every_n_epochs", type=int, default=None)
    a("--save_n_epoch_ratio", type=int, default=None)
    a("--save_last_n_steps", type=int, default=None)
    a("--save_last_n_epochs", type=int, default=None)
    a("--save_state", action="store_true")
    a("--save_state_on_train_end", action="store_true")
    a("--resume", type=str, default=None)
    a("--save_last_n_steps_state", type=int, default=None)
    a("--save_last_n_epochs_state", type=int, default=None)
    a("--no_metadata", action="store_true")
    a("--train_batch_size", type=int, default=1)
    a("--max_train_steps", type=int, default=1600)
    a("--max_train_epochs", type=int, default=None)
    a("--max_data_loader_n_workers", type=int, default=8)
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--mixed_precision", type=str, default="no", choices=["no", "fp16", "bf16"])
    a("--validation_split", type=float, default=0.0)
    a("--validate_every_n_steps", type=int, default=None)
    a("--validate_every_n_epochs", type=int, default=None)
    a("--validation_seed", type=int, default=None)
    a("--max_validation_steps", type=int, default=None)
    a("--seed", type=int, default=None)
    a("--learning_rate", type=float, default=1e-4)
    a("--unet_lr", type=float, default=None)
    a("--text_encoder_lr", type=float, default=None)
    a("--optimizer_type", type=str, default="AdamW")
    a("--network_weights", type=str, default=None)
    a("--network_module", type=str, default=None)
    a("--network_dim", type=int, default=None)
    a("--network_alpha", type=float, default=1)
    a("--network_dropout", type=float, default=None)
    a("--network_args", type=str, default=None, nargs="*")
    a("--network_train_unet_only", action="store_true")
    a("--cache_text_encoder_outputs", action="store_true")
    a("--dim_from_weights", action="store_true")
    a("--sample_every_n_steps", type=int, default=None)
    a("--sample_every_n_epochs", type=int, default=None)
    a("--sample_at_first", action="store_true")
    a("--sample_prompts", type=str, default=None)
    a("--sample_sampler", type=str, default="ddim")
    a("--logging_dir", type=str, default=None)
    a("--log_with", type=str, default=None, choices=["tensorboard", "wandb", "all"])
    a("--log_prefix", type=str, default=None)
    a("--log_tracker_name", type=str, default=None)
    a("--wandb_run_name", type=str, default=None)
    a("--ddp_timeout", type=float, default=None, help="minutes (sd-scripts: int; float here so CI can use seconds)")
    a("--standin_faces", type=str, default=None, help="stand-in only: folder of face PNGs the fake sampler draws from")
    return p


if __name__ == "__main__":
    parser = setup_parser()

    args = parser.parse_args()
    train_util.verify_command_line_training_args(args)
    args = train_util.read_config_from_file(args, parser)

    trainer = NetworkTrainer()
    trainer.train(args)
