"""Real Hugging Face models for the k1lib tests, built from a config with random weights:
nothing is downloaded. ``transformers`` is imported only when a model is built, so importing
this module is cheap (``ddp_worker.py`` imports it too).

The batches are what ``DataCollatorForLanguageModeling(mlm=False)`` gives: one mapping of
``input_ids``, ``attention_mask`` (right padding: zeros at the end of some rows) and
``labels`` (``input_ids`` with -100 at the padding). Each row counts up from a random token by
a random step (mod ``VOCAB``), so after its first two tokens a row is predictable and the
loss falls within a few epochs. Every batch has the same row lengths (shuffled), so the same
number of tokens in the loss: the model's loss is a mean over those tokens, and the mean of two
batches' losses is then the loss of the two concatenated (what DDP's gradient average needs
to equal one process on the global batch).

``hf_ddp_scenario(rank)`` is one rank of a 2-process DDP run (``ddp_worker.py``);
``hf_ddp_reference(r0, r1)`` is what one process gives on the same global batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import k1lib

# absolute: ddp_worker.py and test_distributed.py import this file as the top-level hf_models
from tests.real_models import VOCAB, llama

LENGTH = 12  # tokens a row, padding included
ROW_LENGTHS = (12, 10, 9, 11)  # the rows of every batch (shuffled): the rest of each row is padding
BATCH_SIZE = len(ROW_LENGTHS)
PAD = 0
LAYER = "LlamaDecoderLayer"  # transformers' class of the decoder blocks
LAYER_PATHS = ["model.layers.0", "model.layers.1"]  # their paths in the plain model
CSS = f"{LAYER}: HookModule"
LOSS_TOKENS = sum(n - 1 for n in ROW_LENGTHS)  # labels the causal LM loss counts a batch (shifted by one)

# the DDP scenario: batches and optimizer (the reference uses the same)
DDP_TRAIN, DDP_VALID = 8, 2  # 4 training batches a rank, 1 validation batch
DDP_LR, DDP_MOMENTUM = 0.5, 0.9


def tiny_lm(seed: int = 0) -> nn.Module:
    """A 2-layer Llama causal LM with a vocabulary of ``VOCAB``, untied embeddings, ``PAD`` as
    its padding token, random weights from ``seed`` (torch's global generator is left as it
    was): ``real_models.llama``."""
    model: nn.Module = llama(seed, tied=False, pad_token_id=PAD)
    return model


def lm_batches(n: int, seed: int = 0) -> list[dict[str, Tensor]]:
    """``n`` collator-shaped batches of ``BATCH_SIZE`` rows of ``LENGTH`` tokens (see the module
    docstring)."""
    g = torch.Generator().manual_seed(seed)
    positions = torch.arange(LENGTH)
    out = []
    for _ in range(n):
        start = torch.randint(0, VOCAB, (BATCH_SIZE, 1), generator=g)
        step = torch.randint(1, 4, (BATCH_SIZE, 1), generator=g)
        lengths = torch.tensor(ROW_LENGTHS)[torch.randperm(BATCH_SIZE, generator=g)]
        mask = (positions < lengths[:, None]).long()
        ids = ((start + step * positions) % VOCAB).masked_fill(mask == 0, PAD)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return out


def lm_data(train: int = 4, valid: int = 2, seed: int = 0) -> k1lib.data.Data:
    """Plain lists of mapping batches (the same every call for the same arguments)."""
    return k1lib.data.Data(lm_batches(train, seed), lm_batches(valid, seed + 1000))


def lm_learner(model: nn.Module | None = None, train: int = 4, valid: int = 2) -> Any:
    """A quiet learner for ``tiny_lm()`` on ``lm_data``: AdamW, no ``lossF`` (the output's own
    loss), no progress bar, no Autosave, nothing selected for HookModule until ``l.css`` says so."""
    l = k1lib.Learner()
    l.model = model if model is not None else tiny_lm()
    l.data = lm_data(train, valid)
    l.opt = torch.optim.AdamW(l.model.parameters(), lr=1e-2)
    l.css = ""  # "*" would hook every module of the LM: slow, and not what a test reads
    l.cbs.remove("ProgressBar")
    l.cbs.remove("Autosave")
    return l


def weights(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- DDP ------------------------------------------------------------------------------------------


class Seen(k1lib.Callback):
    """The training batches this rank ran, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[dict[str, Tensor]] = []

    def startBatch(self) -> None:
        if self.learner.training:
            self.batches.append({k: v.clone() for k, v in self.learner.xb.items()})


def hf_ddp_scenario(rank: int) -> dict[str, Any]:
    """One rank of 2 (gloo, CPU): ``tiny_lm`` trained one epoch on ``DDP_TRAIN`` mapping batches
    (``DDP_TRAIN // 2`` a rank), no ``lossF``, HookModule on the decoder layers, SGD."""
    model = tiny_lm(seed=100 + rank)  # different on each rank: DDP sends rank 0's weights
    initial = weights(model)
    l = lm_learner(model, train=DDP_TRAIN, valid=DDP_VALID)
    l.opt = torch.optim.SGD(model.parameters(), lr=DDP_LR, momentum=DDP_MOMENTUM)
    for name in ("LossLandscape", "HookParam", "ParamFinder"):
        l.cbs.remove(name)
    l.css = CSS
    l.cbs.append(Seen(), "Seen")
    l.run(1)
    hooks = l.HookModule
    return {
        "initial": initial,
        "final": weights(l.model),
        "model_type": type(l.model).__name__,
        "seen": l.Seen.batches,
        "train": list(l.Loss.train),
        "valid": list(l.Loss.valid),
        "batches": l.batches,
        "hook_names": list(hooks.names),
        "hook_types": list(hooks.types),
        "hook_forward_means": [hooks[i].forward.means.clone() for i in range(len(hooks))],
        "hook_backward_means": [hooks[i].backward.means.clone() for i in range(len(hooks))],
    }


def hf_ddp_reference(r0: dict[str, Any], r1: dict[str, Any]) -> dict[str, Any]:
    """One process on the global batches of a ``hf_ddp_scenario`` run (rank 0's batch then rank
    1's, concatenated), from rank 0's initial weights: the final weights (``final``), the loss of
    each step (``train``), per decoder layer the mean of its output on each rank's half of each
    step (``forward_means[rank][layer]``, one value a step), and the loss of the trained model
    on the validation batches joined (``valid``: each rank validates one of them)."""
    model = tiny_lm()
    model.load_state_dict(r0["initial"])
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=DDP_LR, momentum=DDP_MOMENTUM)
    means: list[list[list[float]]] = [[[] for _ in LAYER_PATHS] for _ in range(2)]

    def hook(layer: int) -> Any:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            out = output if isinstance(output, Tensor) else output[0]
            for rank, half in enumerate(out.detach().split(BATCH_SIZE)):
                means[rank][layer].append(half.double().mean().item())

        return record

    handles = [model.get_submodule(p).register_forward_hook(hook(i)) for i, p in enumerate(LAYER_PATHS)]
    losses = []
    try:
        for b0, b1 in zip(r0["seen"], r1["seen"], strict=True):
            batch = {k: torch.cat([b0[k], b1[k]]) for k in b0}
            loss = model(**batch).loss
            losses.append(loss.item())
            loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        for handle in handles:
            handle.remove()
    valid = lm_data(DDP_TRAIN, DDP_VALID).valid
    model.eval()
    with torch.no_grad():
        joined = {k: torch.cat([b[k] for b in valid]) for k in valid[0]}
        valid_loss = model(**joined).loss.item()
    return {"final": weights(model), "train": losses, "forward_means": means, "valid": valid_loss}
