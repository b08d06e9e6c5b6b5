"""The random-init models of the structured-pruning benchmark, shared by ``structured.py`` (our environment)
and ``structured_tp.py`` (Torch-Pruning's); imports only torch and transformers."""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    ViTConfig,
    ViTForImageClassification,
)

#: The Llama-shaped decoder of the issue: 8 query / 2 key-value heads (grouped-query attention).
LLAMA = dict(
    vocab_size=8000,
    hidden_size=512,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=2,
    intermediate_size=1536,
    max_position_embeddings=256,
)
#: GPT-2 (``Conv1D`` projections) of the same width and depth.
GPT2 = dict(vocab_size=8000, n_embd=512, n_layer=6, n_head=8, n_inner=1536, n_positions=256)
#: A ViT-S/16-like image transformer, 6 layers: hidden 384, 6 heads, FFN 1536, 224^2 images.
VIT = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536, image_size=224)


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck block (torchvision itself is not imported)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet50(nn.Module):
    """torchvision's ResNet-50 layout: stem, 3-4-6-3 bottleneck stages of 64-128-256-512 planes, classifier."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, stages = 64, []
        for index, (planes, blocks) in enumerate(zip([64, 128, 256, 512], [3, 4, 6, 3], strict=True)):
            stride = 1 if index == 0 else 2
            shortcut = nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False)
            downsample = nn.Sequential(shortcut, nn.BatchNorm2d(planes * 4))
            layers = [Bottleneck(inplanes, planes, stride, downsample)]
            inplanes = planes * 4
            layers += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: 1x1 expansion, 3x3 depthwise, 1x1 linear bottleneck, residual if it fits."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width 1.0): stem 32, seven inverted-residual stages, 1x1 head conv 1280."""

    SETTINGS = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)]
        channels = 32
        for expansion, out, repeats, stride in self.SETTINGS:
            for index in range(repeats):
                layers.append(InvertedResidual(channels, out, stride if index == 0 else 1, expansion))
                channels = out
        layers += [nn.Conv2d(channels, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def build(name: str) -> nn.Module:
    """The random-init ``llama``, ``gpt2``, ``vit``, ``resnet50`` or ``mobilenet_v2``, the same in both
    environments (seed 0)."""
    torch.manual_seed(0)
    if name == "llama":
        return LlamaForCausalLM(LlamaConfig(**LLAMA))
    if name == "gpt2":
        return GPT2LMHeadModel(GPT2Config(**GPT2))
    if name == "vit":
        return ViTForImageClassification(ViTConfig(**VIT))
    model = ResNet50() if name == "resnet50" else MobileNetV2()
    with torch.no_grad():  # BatchNorm as if trained: scales that differ per channel
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model


def example_for(name: str, batch: int = 1) -> torch.Tensor:
    """A small input for tracing: token ids or images."""
    generator = torch.Generator().manual_seed(0)
    if name in ("llama", "gpt2"):
        return torch.randint(0, LLAMA["vocab_size"], (batch, 16), generator=generator)
    return torch.randn(batch, 3, 224 if name == "vit" else 64, 224 if name == "vit" else 64, generator=generator)
