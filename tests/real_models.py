"""Real architectures for the tests, built from small configs with random weights (nothing is
downloaded): Hugging Face models with tied embeddings, an encoder, an encoder-decoder, a PEFT
LoRA model on one of them, and a small ResNet-like CNN (BatchNorm, in-place ReLU, strided
convolutions) written here because torchvision cannot be imported next to the CPU torch.

``transformers`` and ``peft`` are imported when a model is built, so importing this module is
cheap. Every builder takes a ``seed`` and leaves torch's global generator as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

VOCAB = 64


def _seeded(build: Callable[[], nn.Module], seed: int) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def gpt2(seed: int = 0) -> Any:
    """GPT-2 causal LM, 2 layers: ``lm_head.weight`` is tied to ``transformer.wte.weight``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=1, eos_token_id=1
    )
    return _seeded(lambda: GPT2LMHeadModel(config), seed)


def llama(seed: int = 0, tied: bool = True, **options: Any) -> Any:
    """Llama causal LM, 2 layers, tied embeddings by default (as the small Llamas ship);
    ``options`` add to or override LlamaConfig's arguments."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **{
            "vocab_size": VOCAB,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            "tie_word_embeddings": tied,
            **options,
        }
    )
    return _seeded(lambda: LlamaForCausalLM(config), seed)


def bert(seed: int = 0) -> Any:
    """BERT masked LM (an encoder), 2 layers: the decoder weight is tied to the word embeddings."""
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return _seeded(lambda: BertForMaskedLM(config), seed)


def t5(seed: int = 0) -> Any:
    """T5 encoder-decoder, 2 + 2 layers: encoder, decoder and lm_head share the embedding."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        tie_word_embeddings=True,
    )
    return _seeded(lambda: T5ForConditionalGeneration(config), seed)


def lora(model: nn.Module | None = None, seed: int = 0, **options: Any) -> Any:
    """A PEFT LoRA model on ``model`` (default: ``llama``), adapters on the attention's
    ``q_proj`` and ``v_proj`` (``options`` override LoraConfig's arguments)."""
    from peft import LoraConfig, get_peft_model

    base = llama(seed) if model is None else model
    config = LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], **options})
    return _seeded(lambda: get_peft_model(base, config), seed + 1)


def token_batch(rows: int = 2, length: int = 8, seed: int = 0) -> dict[str, Tensor]:
    """A causal-LM batch for the models above: ``input_ids``, ``attention_mask``, ``labels``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (rows, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class BasicBlock(nn.Module):
    """A ResNet basic block: conv-bn-relu-conv-bn, plus the input (downsampled when the stride
    or the width changes), then an in-place ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(out + skip)


class SmallResNet(nn.Module):
    """A ResNet-like CNN for 1x16x16 images and 10 classes, named as torchvision's resnet18
    (conv1, bn1, relu, layer1..layer2, avgpool, fc)."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, stride=2), BasicBlock(2 * width, 2 * width))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(seed: int = 0) -> SmallResNet:
    return _seeded(SmallResNet, seed)  # type: ignore[no-any-return]
