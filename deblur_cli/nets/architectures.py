"""Which network a config describes: MSDN (and its DN ablation) or DeblurGAN's generator.

Why one place: weight files, checkpoints and manifest entries store a config dict; the `arch` key
names the network (absent = MSDN, so every file written before DeblurGAN existed still loads), and
everything that rebuilds a generator goes through `config_from_dict` and `build`.
"""

from __future__ import annotations

from typing import Any, Union

from torch import nn

from deblur_cli.nets.deblurgan import ARCH as DEBLURGAN
from deblur_cli.nets.deblurgan import DeblurGAN, DeblurGANConfig
from deblur_cli.nets.model import MSDN, MSDNConfig

GeneratorConfig = Union[MSDNConfig, DeblurGANConfig]
MSDN_ARCH = "msdn"
ARCHES = (MSDN_ARCH, "dn", DEBLURGAN)  # what `msdn train --arch` accepts; dn = MSDN without the pyramid


def arch_of(config: GeneratorConfig) -> str:
    if isinstance(config, DeblurGANConfig):
        return DEBLURGAN
    return MSDN_ARCH if config.pyramid else "dn"


def config_from_dict(data: dict[str, Any]) -> GeneratorConfig:
    """The config a stored dict describes; an unknown `arch` is a ValueError naming the known ones."""
    arch = data.get("arch", MSDN_ARCH)
    if arch == DEBLURGAN:
        return DeblurGANConfig.from_dict(data)
    if arch != MSDN_ARCH:
        raise ValueError(f"unknown architecture {arch!r} (this msdn knows {MSDN_ARCH}, {DEBLURGAN})")
    return MSDNConfig.from_dict({k: v for k, v in data.items() if k != "arch"})


def default_config(arch: str) -> GeneratorConfig:
    """The network `--arch` names, at its defaults."""
    if arch not in ARCHES:
        raise ValueError(f"unknown --arch {arch!r}; use {', '.join(ARCHES)}")
    return DeblurGANConfig() if arch == DEBLURGAN else MSDNConfig(pyramid=arch != "dn")


def build(config: GeneratorConfig) -> nn.Module:
    return DeblurGAN(config) if isinstance(config, DeblurGANConfig) else MSDN(config)
