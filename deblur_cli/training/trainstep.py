"""The networks of a training run and one optimisation step: WGAN-GP critic updates, then the generator's.

The recipe's terms (DeblurGAN's): critic updates on the same batch with a gradient penalty; the
generator's content loss (perceptual, L1, Charbonnier or PSNR), adversarial term and FFT L1 term.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from deblur_cli.training import losses as L
from deblur_cli.training.distributed import Dist
from deblur_cli.inference.engine import autocast
from deblur_cli.nets.architectures import GeneratorConfig, build
from deblur_cli.training.schedules import cosine_factor, ema_update, lr_factor
from deblur_cli.training.trainconfig import TrainConfig

ContentLoss = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Nets:
    """The networks of a run and everything a checkpoint restores with them."""

    generator: nn.Module
    critic: L.PatchCritic | None
    opt_g: torch.optim.Adam
    sched_g: torch.optim.lr_scheduler.LambdaLR
    opt_d: torch.optim.Adam | None
    sched_d: torch.optim.lr_scheduler.LambdaLR | None
    scaler_g: torch.amp.GradScaler
    scaler_d: torch.amp.GradScaler
    ema: AveragedModel | None = None
    g_forward: Callable[[Tensor], Tensor] | None = None  # the generator as trained (DDP, compiled)
    d_train: nn.Module | None = None

    @property
    def shipped(self) -> nn.Module:
        """What validation scores and export ships: the EMA (steadier than the last step), else the weights."""
        return self.ema.module if self.ema is not None else self.generator

    def parts(self) -> dict[str, Any]:
        """Every part a checkpoint stores a state for, by checkpoint key (None: the run has no such part)."""
        return {"generator": self.generator, "opt_g": self.opt_g, "sched_g": self.sched_g, "ema": self.ema,
                "scaler_g": self.scaler_g, "critic": self.critic, "opt_d": self.opt_d, "sched_d": self.sched_d,
                "scaler_d": self.scaler_d}

    def restorable(self) -> dict[str, Any]:
        """The parts a resume loads; the EMA is restored apart (older checkpoints have none)."""
        return {key: part for key, part in self.parts().items() if part is not None and key != "ema"}

    def states(self) -> dict[str, Any]:
        """Every state a checkpoint stores ({} for a part the run does not have)."""
        return {key: part.state_dict() if part is not None else {} for key, part in self.parts().items()}


def lr_schedule(config: TrainConfig, total: int) -> Callable[[int], float]:
    """The multiplier of `config.lr` at each step of a `total`-step run (`LambdaLR`'s lambda)."""
    final = config.lr_final / config.lr
    if config.schedule == "paper":
        return lambda step: lr_factor(step, total, config.constant_fraction, final)
    return lambda step: cosine_factor(step, total, config.warmup_steps, final)


def build_nets(config: TrainConfig, model_config: GeneratorConfig, device: torch.device, amp: str | None,
                channels_last: bool, total: int) -> Nets:
    """The generator (and critic), their optimizers, schedules and AMP scalers, freshly initialised."""
    generator = build(model_config).to(device)
    critic = L.PatchCritic(config.critic_channels).to(device) if config.adv_weight > 0 else None
    if channels_last:
        generator = generator.to(memory_format=torch.channels_last)
        critic = critic.to(memory_format=torch.channels_last) if critic is not None else None
    factor = lr_schedule(config, total)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=config.betas) if critic else None
    return Nets(generator, critic, opt_g, torch.optim.lr_scheduler.LambdaLR(opt_g, factor), opt_d,
                 torch.optim.lr_scheduler.LambdaLR(opt_d, factor) if opt_d else None,
                 torch.amp.GradScaler(device.type, enabled=amp == "fp16"),
                 torch.amp.GradScaler(device.type, enabled=amp == "fp16"))


def wrap_for_training(nets: Nets, config: TrainConfig, ddp: Dist, device: torch.device) -> None:
    """DDP (several processes) and torch.compile around the networks; the EMA of the generator."""
    g_train: nn.Module = nets.generator
    nets.d_train = nets.critic
    if ddp.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        g_train = nn.parallel.DistributedDataParallel(nets.generator, device_ids=ids)
        nets.d_train = nn.parallel.DistributedDataParallel(nets.critic, device_ids=ids) \
            if nets.critic is not None else None
    nets.g_forward = torch.compile(g_train) if config.compile else g_train
    nets.ema = AveragedModel(nets.generator, avg_fn=ema_update(config.ema_decay), use_buffers=True) \
        if config.ema_decay > 0 else None


def content_loss(config: TrainConfig, device: torch.device) -> ContentLoss:
    if config.content_loss == "perceptual":
        from deblur_cli.training.vgg import load_vgg19

        return L.PerceptualLoss(load_vgg19(Path(config.vgg_weights) if config.vgg_weights else None)).to(device)
    return {"l1": L.l1_loss, "charbonnier": L.charbonnier_loss, "psnr": L.psnr_loss}[config.content_loss]


def critic_updates(nets: Nets, config: TrainConfig, amp: str | None, fake: Tensor, sharp: Tensor,
                   out_of_time: Callable[[], bool] | None = None) -> dict[str, float] | None:
    """`critic_updates` WGAN-GP steps of the critic on this batch; None if `out_of_time` said stop first."""
    device = sharp.device
    assert nets.d_train is not None and nets.opt_d is not None
    for _ in range(config.critic_updates):
        if out_of_time is not None and out_of_time():
            return None
        nets.opt_d.zero_grad(set_to_none=True)
        alpha = torch.rand(sharp.shape[0], 1, 1, 1, device=device)
        x_hat = L.interpolate(sharp, fake.float(), alpha)
        # one critic pass over real, fake and interpolates (one DDP forward per backward)
        with autocast(amp, device):
            scores = nets.d_train(torch.cat([sharp, fake.detach().to(sharp.dtype), x_hat]))
        real_s, fake_s, hat_s = scores.float().chunk(3)
        gp = L.gradient_penalty(hat_s, x_hat, config.gp_weight)
        loss_d = L.critic_loss(real_s, fake_s) + gp
        nets.scaler_d.scale(loss_d).backward()
        nets.scaler_d.step(nets.opt_d)
        nets.scaler_d.update()
    return {"loss_d": loss_d.item(), "gp": gp.item(), "wasserstein": (real_s.mean() - fake_s.mean()).item()}


def generator_update(nets: Nets, config: TrainConfig, amp: str | None, fake: Tensor, sharp: Tensor,
                     content_fn: ContentLoss | None, record: dict[str, Any], coarse: Sequence[Tensor] = ()) -> float:
    """Content + adversarial + FFT + gradient loss (+ the coarser passes' content loss), one optimizer and schedule
    step, the EMA; the loss terms go to `record`."""
    device = sharp.device
    nets.opt_g.zero_grad(set_to_none=True)
    loss_g = torch.zeros((), device=device)
    with autocast(amp, device):
        if content_fn is not None:
            content = content_fn(fake.float(), sharp)
            loss_g = loss_g + config.content_weight * content
            record["content"] = content.item()
            if coarse and config.deep_supervision > 0:
                deep = torch.stack([content_fn(out.float(), F.interpolate(sharp, size=out.shape[-2:], mode="area"))
                                    for out in coarse]).mean()
                loss_g = loss_g + config.deep_supervision * deep
                record["deep"] = deep.item()
        if nets.critic is not None:
            nets.critic.requires_grad_(False)  # the critic only scores here; its DDP hooks stay quiet
            adv = L.adversarial_loss(nets.critic(fake).float())
            nets.critic.requires_grad_(True)
            loss_g = loss_g + config.adv_weight * adv
            record["adv"] = adv.item()
    if config.fft_weight > 0:
        fft = L.fft_l1_loss(fake, sharp)
        loss_g = loss_g + config.fft_weight * fft
        record["fft"] = fft.item()
    if config.grad_weight > 0:
        grad = L.gradient_l1_loss(fake, sharp)
        loss_g = loss_g + config.grad_weight * grad
        record["grad"] = grad.item()
    nets.scaler_g.scale(loss_g).backward()
    nets.scaler_g.step(nets.opt_g)
    nets.scaler_g.update()
    nets.sched_g.step()
    if nets.ema is not None:
        nets.ema.update_parameters(nets.generator)
    if nets.sched_d is not None:
        nets.sched_d.step()
    return loss_g.item()
