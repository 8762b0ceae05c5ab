"""PT2E static int8 quantisation of a device encoder (litert-torch, torchao).

``quantize_encoder(encoder, calibration)`` returns the converted Q/DQ graph and the quantizer
that litert-torch lowers to a fully int8 ``.tflite`` (:mod:`epic.export`): int8 per-channel
symmetric weights, int8 per-tensor activations with a ``MinMaxObserver``, int32 biases, int8
input and output; optionally a float first block, and an input grid anchored on silence.
``bias_corrected(encoder, shift)`` is the empirical bias correction of the int8 latents
(Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction", section 4.2, with the expected error measured on calibration data): the
encoder with its last layer's bias lowered by the int8 model's mean latent error.
"""

from __future__ import annotations

import copy
import dataclasses
import re

import numpy as np
import torch

from epic.errors import InputError

__all__ = ["bias_corrected", "quantization_config", "quantize_encoder"]


OBSERVERS = ("minmax", "histogram")
"""Activation observers of :func:`quantization_config`."""


def quantization_config(observer: str = "histogram"):
    """PT2E static int8 config: per-channel symmetric int8 weights (min-max), per-tensor
    affine int8 activations observed by ``observer``: ``"minmax"`` (the observed range) or
    ``"histogram"`` (the range that minimises the L2 quantisation error of the observed
    histogram, so rare outliers are clipped; litert-torch's default)."""
    from litert_torch.quantize import pt2e_quantizer as pq
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    if observer not in OBSERVERS:
        raise InputError(f"observer {observer!r}: expected one of {', '.join(OBSERVERS)}")
    ctr = {"minmax": MinMaxObserver, "histogram": HistogramObserver}[observer]
    base = pq.get_symmetric_quantization_config(is_per_channel=True)
    act = dataclasses.replace(base.input_activation,
                              observer_or_fake_quant_ctr=ctr.with_args(eps=2**-12))
    return dataclasses.replace(base, input_activation=act, output_activation=act)


def _in_stem(node) -> bool:
    """True for graph nodes of the encoder's stem: its Decimator (where it has one) and its
    first block (``body.0``: conv + ReLU)."""
    for path, _ in node.meta.get("nn_module_stack", {}).values():
        name = re.sub(r"\[(\d+)\]", r".\1", path.replace("L['self'].", ""))
        if name in ("body.0", "decimator"):
            return True
    return False


def _anchor_input_grid(graph: torch.fx.GraphModule, anchor: float) -> float:
    """Widen the calibrated int8 grid of the graph input so that ``anchor`` lies on it.

    The step grows from ``s`` to ``|anchor| / k`` with ``k = floor(|anchor| / s)`` (at most a
    factor ``(k + 1) / k``) and the zero point moves to keep the observed range covered.
    Returns the new step.
    """
    from torchao.quantization.pt2e.observer import MinMaxObserver

    x = next(n for n in graph.graph.nodes if n.op == "placeholder")
    observers = [getattr(graph, u.target) for u in x.users
                 if u.op == "call_module" and hasattr(getattr(graph, u.target), "min_val")]
    if len(observers) != 1:
        raise RuntimeError(f"expected one observer on the graph input, found {len(observers)}")
    obs = observers[0]
    if type(obs) is not MinMaxObserver:  # the input's range stays min-max, anchored
        name = next(u.target for u in x.users if getattr(graph, u.target, None) is obs)
        minmax = MinMaxObserver(dtype=obs.dtype, qscheme=obs.qscheme, quant_min=obs.quant_min,
                                quant_max=obs.quant_max, eps=2**-12)
        minmax.min_val, minmax.max_val = obs.min_val.clone(), obs.max_val.clone()
        setattr(graph, name, minmax)
        obs = minmax
    lo, hi = min(float(obs.min_val), 0.0), max(float(obs.max_val), 0.0)
    step = (hi - lo) / (obs.quant_max - obs.quant_min)
    if anchor == 0 or step <= 0:
        return step
    step = abs(anchor) / max(1, int(abs(anchor) // step))
    zero_point = min(max(obs.quant_min - round(lo / step), obs.quant_min), obs.quant_max)
    obs.min_val = torch.tensor(step * (obs.quant_min - zero_point))
    obs.max_val = torch.tensor(step * (obs.quant_max - zero_point))
    return step


def quantize_encoder(encoder: torch.nn.Module, calibration: np.ndarray, float_stem: bool = False,
                     input_anchor: float | None = None, observer: str = "histogram"):
    """PT2E-quantise ``encoder`` calibrated on ``calibration`` ``(N, 5, 1000, k)`` float32.

    With ``float_stem`` the first block (``body.0``, a 5 -> 16 channel conv + ReLU, about
    7 % of the MACs) stays float32, and so does the model input: its output is the first
    int8 tensor. This is an escape hatch for checkpoints that are sensitive to int8 input
    (58 % of a normalised gather's samples lie within one int8 step of silence): with the
    epoch-3 FlatVel-A checkpoint, int8 input cost 8.8 % of MAE and the float stem -3 %; with
    the final one both stay near 1 % (docs/edge.md), so the default is fully int8.

    ``input_anchor`` (int8 input only): a normalised input value that must be exactly
    representable, the value of zero amplitude (silence, -0.089 for FlatVel-A). Min-max puts
    silence between two steps, so every quiet sample (58 % of a gather) gets the same
    rounding error: a bias of up to half a step that the decoder amplifies (with the shipped
    checkpoint, +1.8 % to +18 % MAE depending on the calibration draw).

    ``observer``: the activations' observer (:func:`quantization_config`); the input's
    range is min-max whatever it is, so that the anchor holds.

    Returns ``(graph, quantizer)``: the converted (Q/DQ) ``torch.fx.GraphModule``, fixed to
    batch 1, and the ``PT2EQuantizer`` that litert-torch needs to lower it to int8.
    """
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class _Quantizer(PT2EQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            if float_stem:
                stem = [n for n in model.graph.nodes if _in_stem(n)]
                if not stem:
                    raise RuntimeError("float_stem: no node of the encoder's body.0 found")
                for node in stem:
                    node.meta.pop("quantization_annotation", None)
            return model

    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) < 1:
        raise InputError(f"calibration: expected (N >= 1, 5, nt, k), got {calibration.shape}")
    quantizer = _Quantizer().set_global(quantization_config(observer))
    example = (torch.from_numpy(calibration[:1]),)
    graph = torch.export.export(copy.deepcopy(encoder).eval(), example).module()
    graph = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for sample in calibration:  # the exported graph has a static batch of 1
            graph(torch.from_numpy(sample[None]))
    if input_anchor is not None and not float_stem:
        _anchor_input_grid(graph, input_anchor)
    return convert_pt2e(graph, fold_quantize=False), quantizer


def bias_corrected(encoder: torch.nn.Module, shift: np.ndarray) -> torch.nn.Module:
    """A copy of ``encoder`` whose projection bias is lowered by ``shift`` ``(token_dim,)``.

    ``shift`` is the mean error (int8 minus float) of each latent channel, over calibration
    gathers and receivers: rounding through seven int8 layers does not average out, it
    leaves a systematic offset per channel (about half of the error's energy for the shipped
    FlatVel-A encoder). Quantising the corrected copy gives int8 latents centred on the
    original float encoder's.
    """
    project = getattr(encoder, "project", None)
    if project is None or project.bias is None:
        raise InputError("bias correction needs the encoder's final `project` layer with a bias")
    shift = np.asarray(shift, dtype=np.float32)
    if shift.shape != tuple(project.bias.shape) or not np.isfinite(shift).all():
        raise InputError(f"bias correction: shift of shape {shift.shape} (finite values) "
                         f"expected {tuple(project.bias.shape)}")
    corrected = copy.deepcopy(encoder).eval()
    with torch.no_grad():
        corrected.project.bias -= torch.from_numpy(shift)
    return corrected
