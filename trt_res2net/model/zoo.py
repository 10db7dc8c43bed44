"""The Res2Net model zoo of PaddleClas: names, hyper-parameters, weight URLs, published accuracy.

Hyper-parameters follow PaddleClas's res2net.py / res2net_vd.py (ppcls/arch/backbone/model_zoo); the per-block
layout (channels, strides, shortcut kind and the legacy PaddleClas block names used in weight keys) is derived here
once and read by the weight loader, the ONNX exporter and the numpy reference alike.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, replace

from ..core.errors import UserError

WEIGHTS_BASE_URL = "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/"


@dataclass(frozen=True)
class ModelSpec:
    name: str  # lower-case zoo name, e.g. "res2net50_vd_26w_4s"
    paddle_name: str  # PaddleClas class / file name, e.g. "Res2Net50_vd_26w_4s"
    layers: int  # 50, 101 or 200: selects PaddleClas's legacy block names
    vd: bool  # deep 3x3 stem and avg-pool ("vd") shortcuts
    depths: tuple[int, int, int, int]
    width: int  # channels per split in stage 1
    scales: int  # number of splits
    num_classes: int = 1000
    ssld: bool = False
    top1: float | None = None  # published ImageNet-1k accuracy (%), PaddleClas docs
    top5: float | None = None

    @property
    def weights_url(self) -> str | None:
        if self.top1 is None:  # reduced test models have no published weights
            return None
        base = os.environ.get("TRT_RES2NET_WEIGHTS_BASE_URL", WEIGHTS_BASE_URL)
        suffix = "_ssld_pretrained.pdparams" if self.ssld else "_pretrained.pdparams"
        return base.rstrip("/") + "/" + self.paddle_name + suffix

    def reduced(self, *, width: int | None = None, depths: tuple[int, ...] | None = None,
                num_classes: int | None = None, scales: int | None = None) -> ModelSpec:
        """A smaller model of the same architecture code, for tests and quick experiments."""
        spec = replace(
            self,
            width=width or self.width,
            depths=tuple(depths or self.depths),
            scales=scales or self.scales,
            num_classes=num_classes or self.num_classes,
            top1=None,
            top5=None,
        )
        tag = f"w{spec.width}s{spec.scales}d{''.join(map(str, spec.depths))}c{spec.num_classes}"
        return replace(spec, name=f"{self.name}-{tag}")


def _m(name, paddle, layers, vd, depths, width, scales, top1, top5, ssld=False):
    return ModelSpec(name, paddle, layers, vd, depths, width, scales, 1000, ssld, top1, top5)


# Published top-1/top-5 from the model card (PaddleClas release/2.5 docs). Params/FLOPs are not copied:
# PaddleClas's doc table swaps the params/FLOPs rows of two models; build.py --list-models computes them from the graph.
MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        _m("res2net50_26w_4s", "Res2Net50_26w_4s", 50, False, (3, 4, 6, 3), 26, 4, 79.3, 94.6),
        _m("res2net50_14w_8s", "Res2Net50_14w_8s", 50, False, (3, 4, 6, 3), 14, 8, 79.5, 94.7),
        _m("res2net50_vd_26w_4s", "Res2Net50_vd_26w_4s", 50, True, (3, 4, 6, 3), 26, 4, 79.8, 94.9),
        _m("res2net50_vd_26w_4s_ssld", "Res2Net50_vd_26w_4s", 50, True, (3, 4, 6, 3), 26, 4, 83.1, 96.6, True),
        _m("res2net101_vd_26w_4s", "Res2Net101_vd_26w_4s", 101, True, (3, 4, 23, 3), 26, 4, 80.6, 95.2),
        _m("res2net101_vd_26w_4s_ssld", "Res2Net101_vd_26w_4s", 101, True, (3, 4, 23, 3), 26, 4, 83.9, 97.1, True),
        _m("res2net200_vd_26w_4s", "Res2Net200_vd_26w_4s", 200, True, (3, 12, 48, 3), 26, 4, 81.2, 95.7),
        _m("res2net200_vd_26w_4s_ssld", "Res2Net200_vd_26w_4s", 200, True, (3, 12, 48, 3), 26, 4, 85.1, 97.4, True),
    ]
}


def list_models() -> list[str]:
    """The zoo's model names (``build.py --list-models`` adds parameters, GFLOPs and published accuracy)."""
    return list(MODELS)


def get_model(name: str) -> ModelSpec:
    """Look a model up by name (case-insensitive; '-' and '_' alike). Unknown → closest names."""
    key = name.strip().lower().replace("-", "_")
    if key in MODELS:
        return MODELS[key]
    close = difflib.get_close_matches(key, MODELS, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise UserError(f"unknown model '{name}'.{hint} Valid names: {', '.join(MODELS)}")


# --- the architecture, derived once -------------------------------------------------------------------


@dataclass(frozen=True)
class ConvUnit:
    """PaddleClas's ConvBNLayer: conv (no bias) + BN(eps 1e-5) + optional ReLU. ``prefix`` is its key prefix."""

    prefix: str
    cin: int
    cout: int
    kernel: int
    stride: int
    relu: bool


@dataclass(frozen=True)
class BlockLayout:
    """One Bottle2neck block: 1x1 conv, the hierarchical 3x3 branches, 1x1 conv, shortcut."""

    stage: int
    index: int
    cin: int
    mid: int  # width * scales * 2**stage
    split: int  # mid // scales
    cout: int  # 256 * 2**stage
    stride: int
    shortcut: str  # "identity" | "conv" (1x1 with the block stride) | "pool_conv" (vd: avgpool 2x2 ceil + 1x1)
    conv0: ConvUnit
    branches: tuple[ConvUnit, ...]  # branch2b_1 .. branch2b_{scales-1}
    conv2: ConvUnit
    short: ConvUnit | None

    @property
    def prefix(self) -> str:
        return f"bb_{self.stage}_{self.index}"


def legacy_block_name(spec: ModelSpec, stage: int, index: int) -> str:
    """PaddleClas's legacy block name (res2a, res4b22, ...) that appears inside branch keys of the .pdparams."""
    deep = (101, 152, 200) if spec.vd else (101, 152)
    if stage == 2 and spec.layers in deep:
        return "res4a" if index == 0 else f"res4b{index}"
    return f"res{stage + 2}{chr(ord('a') + index)}"


def stem_units(spec: ModelSpec) -> list[ConvUnit]:
    if spec.vd:
        return [
            ConvUnit("conv1_1", 3, 32, 3, 2, True),
            ConvUnit("conv1_2", 32, 32, 3, 1, True),
            ConvUnit("conv1_3", 32, 64, 3, 1, True),
        ]
    return [ConvUnit("conv1", 3, 64, 7, 2, True)]


def block_layouts(spec: ModelSpec) -> list[BlockLayout]:
    blocks = []
    cin = 64
    for s, depth in enumerate(spec.depths):
        k = 2**s
        mid, cout = spec.width * spec.scales * k, 256 * k
        split = mid // spec.scales
        for i in range(depth):
            stride = 2 if (i == 0 and s > 0) else 1
            p = f"bb_{s}_{i}"
            legacy = legacy_block_name(spec, s, i)
            if i > 0:
                shortcut, short = "identity", None
            elif spec.vd and s > 0:
                shortcut, short = "pool_conv", ConvUnit(f"{p}.short", cin, cout, 1, 1, False)
            else:
                shortcut, short = "conv", ConvUnit(f"{p}.short", cin, cout, 1, stride, False)
            blocks.append(
                BlockLayout(
                    stage=s, index=i, cin=cin, mid=mid, split=split, cout=cout, stride=stride,
                    shortcut=shortcut,
                    conv0=ConvUnit(f"{p}.conv0", cin, mid, 1, 1, True),
                    branches=tuple(
                        ConvUnit(f"{p}.{legacy}_branch2b_{j}", split, split, 3, stride, True)
                        for j in range(1, spec.scales)
                    ),
                    conv2=ConvUnit(f"{p}.conv2", mid, cout, 1, 1, False),
                    short=short,
                )
            )
            cin = cout
    return blocks


def feature_channels(spec: ModelSpec) -> int:
    return 256 * 2 ** (len(spec.depths) - 1)
