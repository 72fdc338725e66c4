"""Step: export the physically pruned model."""

from kfp.dsl import Artifact, Input, Metrics, Model, Output

from . import component


@component
def export_model(
    model: Input[Model],
    masks: Input[Artifact],
    pruned: Output[Model],
    metrics: Output[Metrics],
    neuron_multiple: int = 8,
    onnx: str = "none",
):
    """Fold the tuned scales into the weights and slice the pruned heads and neurons away; with onnx fp32 or int8,
    also write the model's ONNX folder (model.onnx, config, tokenizer) in its onnx/ sub-folder."""
    from fastprune.components.runtime import run_component

    run_component("export", pruned, metrics, locals())
