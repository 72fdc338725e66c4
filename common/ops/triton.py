"""The Triton Inference Server model configuration (``config.pbtxt``) of an exported ONNX model.

Triton's ONNX Runtime backend needs each input's and output's name, data type and dims; they are read from the
ONNX graph itself (dynamic axes become -1). Batching stays with the client (``max_batch_size: 0``: the batch is the
first of the dims): requests of different sequence lengths could not be batched together by Triton anyway.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

# ONNX TensorProto element types -> Triton data types (those an exported model uses)
TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL"}


def onnx_signature(path: str | Path) -> dict[str, list[tuple[str, str, list[int]]]]:
    """``{"inputs": [(name, triton type, dims)], "outputs": [...]}`` of an ONNX file (-1 for a dynamic axis)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def describe(value) -> tuple[str, str, list[int]]:
        tensor = value.type.tensor_type
        if tensor.elem_type not in TRITON_TYPES:
            raise ConfigError(
                f"{path}: {value.name} has ONNX element type {tensor.elem_type}, which has no Triton "
                f"type here (known: {sorted(TRITON_TYPES)})"
            )
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        return value.name, TRITON_TYPES[tensor.elem_type], dims

    return {
        "inputs": [describe(v) for v in graph.input if v.name not in initializers],
        "outputs": [describe(v) for v in graph.output],
    }


def triton_config(path: str | Path, name: str) -> str:
    """The ``config.pbtxt`` text of the ONNX model at ``path`` served as ``name`` by Triton."""
    signature = onnx_signature(path)

    def block(kind: str) -> str:
        entries = ",\n".join(
            f'  {{\n    name: "{n}"\n    data_type: {t}\n    dims: [ {", ".join(map(str, d))} ]\n  }}'
            for n, t, d in signature[kind]
        )
        return f"{kind[:-1]} [\n{entries}\n]\n"

    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0  # the batch is the first of the dims\n'
        f"{block('inputs')}{block('outputs')}"
    )
