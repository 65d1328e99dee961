"""``--offload``: keep the transformer layers in CPU memory and move each to the GPU only while it runs.

For a GPU that cannot hold the whole model (the 4B model in fp16 needs 7.9 GB for its weights): the
embeddings and the final LayerNorm live on the GPU, each layer's weights live in (pinned) CPU memory and
are copied to the GPU just before the layer runs and dropped right after, so the GPU holds one layer at a
time. Every step then moves all layer weights over the bus: slow, but it runs. On a CPU device nothing
moves and the model is unchanged.
"""

import torch
from torch import nn

from .gpt2_modeling import GPT2Model


class _LayerOnDemand:
    """Forward hooks that give one layer's parameters GPU copies for the duration of its forward."""

    def __init__(self, layer: nn.Module, device: torch.device):
        self.device = device
        self.host = {name: parameter.data for name, parameter in layer.named_parameters()}

    def before(self, layer: nn.Module, _args: tuple) -> None:
        for name, parameter in layer.named_parameters():
            parameter.data = self.host[name].to(self.device, non_blocking=True)

    def after(self, layer: nn.Module, _args: tuple, _output: object) -> None:
        for name, parameter in layer.named_parameters():
            parameter.data = self.host[name]


def offload_layers(model: GPT2Model, device: torch.device) -> GPT2Model:
    """Place ``model`` (on the CPU) for running on ``device`` with its transformer layers kept on the CPU.

    Everything but the layers moves to ``device``; on CUDA the layers' weights are pinned, so the
    per-layer copies can overlap with compute. Returns ``model``.
    """
    layers = model.transformer.layers
    for name, child in model.named_children():
        if name != "transformer":
            child.to(device)
    for name, child in model.transformer.named_children():
        if name != "layers":
            child.to(device)
    for layer in layers:
        if device.type == "cuda":
            for parameter in layer.parameters():
                parameter.data = parameter.data.pin_memory()
        hooks = _LayerOnDemand(layer, device)
        layer.register_forward_pre_hook(hooks.before)
        layer.register_forward_hook(hooks.after)
    return model
