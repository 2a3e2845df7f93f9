"""Residual-stream and MLP hooks, shared by metric families, on any architecture with an adapter
(`ckptstudy.model.arch`).

Residual points of an L-layer model: point 0 = the embedding output = the input of layer 0;
point l + 1 = the output of layer l (the residual stream after it; the last point is taken before
the final norm). The MLP activation of layer l is the input of its MLP output projection (after the
nonlinearity; SwiGLU: silu(gate) x up): [batch, seq, d_ff]; "neuron" k of layer l is its k-th entry.

Taps hand each tensor to a callback while the forward runs and keep nothing themselves (the caller
reduces and drops). `layer_inputs` + `run_layers` re-run the model from a middle layer on modified
residuals, reusing the clean pass below it (`ckptstudy.measure.layers.LayerCall`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ckptstudy.measure.capture import hooks
from ckptstudy.measure.layers import LayerCall, layer_input, layer_output
from ckptstudy.model.arch import UnsupportedModelError, model_parts

TensorFn = Callable[[int, torch.Tensor], None]  # (residual point or layer, tensor) -> None


def mlp_out_projs(model) -> list[torch.nn.Module]:
    """Each layer's MLP output projection, whose input is the MLP activation."""
    return model_parts(model).mlp_out_projs


@contextmanager
def tap_residual(model, fn: TensorFn) -> Iterator[None]:
    """Call fn(point, hidden [b, s, d]) for every residual point 0..L during each forward inside."""
    parts = model_parts(model)

    def first(_module, args, kwargs):
        fn(0, layer_input(args, kwargs))

    def after(layer: int):
        def hook(_module, _args, output):
            fn(layer + 1, layer_output(output))

        return hook

    handles = [parts.layers[0].register_forward_pre_hook(first, with_kwargs=True)]
    handles += [layer.register_forward_hook(after(i)) for i, layer in enumerate(parts.layers)]
    with hooks(handles):
        yield


@contextmanager
def tap_mlp(model, fn: TensorFn) -> Iterator[None]:
    """Call fn(layer, activation [b, s, d_ff]) for every layer's MLP activation during each forward inside.

    Registered after `clamp_mlp` (i.e. inside its `with`), the tap sees the clamped activation.
    """

    def tap(layer: int):
        def hook(_module, args):
            fn(layer, args[0])

        return hook

    handles = [proj.register_forward_pre_hook(tap(i)) for i, proj in enumerate(mlp_out_projs(model))]
    with hooks(handles):
        yield


def mlp_write_projection(model, states: torch.Tensor) -> torch.Tensor:
    """How much each MLP neuron's output weight points along a residual state, per layer: states [n, L, d] (the
    state at layer l's output for row i) -> [n, L, d_ff] = states[:, l] @ W_out_l (one activation unit of
    neuron k of layer l adds W_out_l[:, k] to the residual stream). Refused (UnsupportedModelError) where the MLP
    output is normalised before it is added (OLMo 2): a neuron's write is then not W_out_l[:, k] x activation."""
    parts = model_parts(model)
    if not parts.mlp_writes_linearly:
        raise UnsupportedModelError(MLP_WRITE_NONLINEAR.format(arch=parts.architecture.model_types[0]))
    out = []
    for layer in range(parts.n_layers):
        weight = parts.mlp_out_matrix(layer)
        out.append(states[:, layer].to(weight.dtype) @ weight)
    return torch.stack(out, dim=1).double()


MLP_WRITE_NONLINEAR = (
    "{arch} normalises each MLP output before adding it to the residual stream (post-norm), so a neuron's write "
    "depends on the whole MLP output, not on its own activation and output weight alone"
)


def clamp_neurons(activation: torch.Tensor, index: torch.Tensor, value: torch.Tensor, from_position: int = 1):
    """A copy of `activation` [b, s, d_ff] with neurons `index` [k] set to `value` [k] at positions
    >= `from_position`; every other entry unchanged."""
    out = activation.clone()
    out[:, from_position:, index] = value.to(out.dtype)
    return out


@contextmanager
def clamp_mlp(model, neurons: dict[int, tuple[torch.Tensor, torch.Tensor]], from_position: int = 1) -> Iterator[None]:
    """Patch: in layer l, neurons index_l [k] of the MLP activation are held at value_l [k] at every
    position >= `from_position` (position 0 is left free), for each forward inside.

    `neurons` = {layer: (index, value)}.
    """
    projs = mlp_out_projs(model)

    def patch(index: torch.Tensor, value: torch.Tensor):
        def hook(_module, args):
            act = args[0]
            return (clamp_neurons(act, index.to(act.device), value.to(act.device), from_position), *args[1:])

        return hook

    handles = [projs[layer].register_forward_pre_hook(patch(*iv)) for layer, iv in neurons.items()]
    with hooks(handles):
        yield


@torch.no_grad()
def layer_inputs(model, ids: torch.Tensor, layer: int, batch_size: int = 16) -> tuple[torch.Tensor, LayerCall]:
    """The input residual of `layer` for every row of `ids` [n, s] -> [n, s, d] (CPU), and the call the model's
    layers get for sequences of length s (causal mask, positions, rotary tables: `LayerCall`), recorded with a
    batch axis of 1 so it broadcasts to any number of rows (no padding)."""
    parts = model_parts(model)
    if not 0 <= layer < parts.n_layers:
        raise ValueError(f"layer {layer} is not in 0..{parts.n_layers - 1}")
    device = next(model.parameters()).device
    kept: list[torch.Tensor] = []
    calls: list[LayerCall] = []

    def grab(_module, args, kwargs):
        kept.append(layer_input(args, kwargs).detach().cpu())

    def grab_call(_module, args, kwargs):
        calls.append(LayerCall.recorded(args, kwargs))

    with hooks([parts.layers[layer].register_forward_pre_hook(grab_call, with_kwargs=True)]):
        model.base_model(input_ids=ids[:1].to(device), use_cache=False)
    with hooks([parts.layers[layer].register_forward_pre_hook(grab, with_kwargs=True)]):
        for start in range(0, ids.shape[0], batch_size):  # the base model: no unembedding
            model.base_model(input_ids=ids[start : start + batch_size].to(device), use_cache=False)
    return torch.cat(kept), calls[0]


@torch.no_grad()
def run_layers(model, hidden: torch.Tensor, start: int, call: LayerCall, fn: TensorFn | None = None) -> torch.Tensor:
    """Run `hidden` [b, s, d] (the input of layer `start`) through layers start..L-1 with the recorded `call` of
    `layer_inputs`; fn(point, output) gets each output (point l + 1 after layer l).
    Returns the last layer's output (before the final norm)."""
    parts = model_parts(model)
    device = next(model.parameters()).device
    hidden = hidden.to(device)
    for i in range(start, parts.n_layers):
        hidden = call(parts.layers[i], hidden)
        if fn is not None:
            fn(i + 1, hidden)
    return hidden
