"""Budget re-split during tuning (in the spirit of K-prune's iterative knowledge-preserving search).

The search splits the FLOPs budget across layers once, from Fisher importance measured on the dense model. With
``resplit``, tuning re-decides it on its way up: before layer ``i`` is tuned, the layers below are final (pruned
and reconstructed), so the mask gradients are measured again on that model with the layers ``i..L-1`` still
whole, and the budget the lower layers left is split anew across ``i..L-1`` by the same global search. Layer
``i`` takes its share (the layers above are decided again at their turn), then is tuned as usual. The search
chooses layer ``i``'s units by the diagonal Fisher, undoing the rearrangement; with ``rearrange`` (where the task
asks for it: ``Task.resplit_rearranges``) they are rearranged again with the gradients just measured.

The mask gradients of layer ``i`` and above are measured from the hidden states tuning carries into layer ``i``
(the pruned model's), so the pass before layer ``i`` costs only the layers from ``i`` up: over a model of ``L``
layers, about ``(L - 1) / 2`` Fisher passes over the tuning examples in all.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from ..model.arch import adapter_for
from ..model.cost import dense_macs, masked_macs
from ..model.masks import Masks
from ..tasks.spec import Task
from .allocate import search_by
from .fisher import LabelSource, MaskGradients, collect_mask_gradients
from .latency_search import masks_latency, search_latency
from .latency_table import LatencyTable
from .rearrange import Shrink, rearrange_layer

log = logging.getLogger(__name__)


class BudgetResplit:
    """Called by :func:`~fastprune.common.method.tuning.tune_masks` at each layer with the masks being tuned, the tuning
    batches and the hidden states entering the layer: re-chooses the units of that layer and above, in place,
    within the budget of ``initial`` (the masks tuning starts from).
    ``available`` (from an iterative Fisher) marks units no step may bring back; ``task`` computes the loss;
    ``rearrange``: rearrange each re-split layer's units (heads within blocks of ``head_block``, see
    :func:`~fastprune.common.method.rearrange.rearrange_masks`); ``per_token``: the Fisher rows are per token, as the
    Fisher stage's were (see :func:`~fastprune.common.method.fisher.collect_mask_gradients`)."""

    def __init__(
        self,
        model: nn.Module,
        initial: Masks,
        seq_len: float,
        device: torch.device | str = "cpu",
        labels: LabelSource = "data",
        available: Masks | None = None,
        table: LatencyTable | None = None,
        allocation: str = "global",
        task: Task | None = None,
        rearrange: bool = False,
        head_block: int | None = None,
        shrink: Shrink = 0.0,
        per_token: bool = False,
    ) -> None:
        self.model, self.seq_len, self.device, self.labels, self.task = model, seq_len, device, labels, task
        self.per_token = per_token
        self.rearrange, self.head_block, self.shrink = rearrange, head_block, shrink
        self.allocation = allocation
        self.dims = adapter_for(model).dims(model.config)
        self.table = table
        self.budget = self._cost(initial)
        self.available = available
        self.log: list[dict] = []

    def _cost(self, masks: Masks) -> float:
        """MACs, or block latency under the table's fitted curves."""
        return masks_latency(masks, self.table) if self.table else masked_macs(masks, self.dims, self.seq_len)

    def _top(self, layers: int) -> LatencyTable | None:
        """The latency table of the top ``layers`` layers (None under a FLOPs constraint)."""
        if self.table is None:
            return None
        return self.table.model_copy(update={"dims": dataclasses.replace(self.table.dims, num_layers=layers)})

    def _split(self, grads: MaskGradients, layer: int, left: float) -> tuple[float, Masks]:
        """The share of the layers from ``layer`` up that ``left`` pays for, and the units the search keeps there
        (by the importance in ``grads``)."""
        heads, neurons = grads.head_importance()[layer:], grads.neuron_importance()[layer:]
        top = self._top(len(heads))
        macs = dense_macs(dataclasses.replace(self.dims, num_layers=len(heads)), self.seq_len)
        share = left / (top.dense_ms() if top else macs)
        if share >= 1.0:
            return share, Masks(torch.isfinite(heads).float(), torch.isfinite(neurons).float())
        if share <= 0.0:
            return share, Masks(torch.zeros(heads.shape), torch.zeros(neurons.shape))
        if top:
            return share, search_latency(heads, neurons, top, share)
        return share, search_by(self.allocation, grads, self.dims, self.seq_len, share, layer)

    def __call__(self, layer: int, masks: Masks, batches: list[dict], hidden: list[torch.Tensor]) -> None:
        if layer == 0:
            return  # nothing below it is final yet: the search's split stands
        below = Masks(masks.head[:layer], masks.neuron[:layer])
        left = self.budget - self._cost(below)
        measured = Masks(masks.head.clone(), masks.neuron.clone())
        measured.head[layer:], measured.neuron[layer:] = 1.0, 1.0
        if self.available is not None:
            measured.head[layer:] *= self.available.head[layer:].to(measured.head)
            measured.neuron[layer:] *= self.available.neuron[layer:].to(measured.neuron)
        with torch.inference_mode(False), torch.enable_grad():
            grads = collect_mask_gradients(
                self.model,
                batches,
                masks=measured,
                device=self.device,
                progress=False,
                labels=self.labels,
                start=(layer, hidden),
                task=self.task,
                per_token=self.per_token,
            )
        share, chosen = self._split(grads, layer, left)
        rearranged = self.rearrange and 0.0 < share < 1.0
        if rearranged:
            chosen.head[0], chosen.neuron[0] = rearrange_layer(
                chosen.head[0].cpu(), chosen.neuron[0].cpu(), grads, layer, self.head_block, self.shrink
            )
        before = (int((masks.head[layer] != 0).sum()), int((masks.neuron[layer] != 0).sum()))
        masks.head[layer:] = chosen.head.to(masks.head)
        masks.neuron[layer:] = chosen.neuron.to(masks.neuron)
        after = (int(chosen.head[0].sum()), int(chosen.neuron[0].sum()))
        self.log.append(
            {
                "layer": layer,
                "share": share,
                "heads": [before[0], after[0]],
                "neurons": [before[1], after[1]],
                "rearranged": rearranged,
            }
        )
        log.info(
            "re-split at layer %d: %.3f of the layers above kept; heads %d -> %d, neurons %d -> %d",
            layer,
            share,
            before[0],
            after[0],
            before[1],
            after[1],
        )
