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


def build(name: str) -> nn.Module:
    """The random-init model ``llama``, ``gpt2``, ``vit`` or ``resnet50``, the same in both environments (seed 0)."""
    torch.manual_seed(0)
    if name == "llama":
        return LlamaForCausalLM(LlamaConfig(**LLAMA))
    if name == "gpt2":
        return GPT2LMHeadModel(GPT2Config(**GPT2))
    if name == "vit":
        return ViTForImageClassification(ViTConfig(**VIT))
    model = ResNet50()
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
