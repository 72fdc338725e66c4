"""``fastprune onnx``: the deployable ONNX folder of a pruned model (``model.onnx``, ``config.json``, the tokenizer),
for ONNX Runtime and Optimum's ``ORTModelFor...``. Registered in :mod:`fastprune.cli`."""

from __future__ import annotations

import argparse
import json


def _add_onnx(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pruned", required=True, help="the model folder: model/ of fastprune prune, or the export step's")
    p.add_argument("--output", required=True, help="the ONNX folder to write (must not exist, unless --overwrite)")
    p.add_argument(
        "--quantize",
        default="none",
        metavar="none|int8",
        help="int8: onnxruntime dynamic quantization, per channel (default: none, fp32)",
    )
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.set_defaults(func=_onnx)


def _onnx(args: argparse.Namespace) -> int:
    from fastprune.common.model.onnx_folder import check_model_folder, check_output, check_quantize
    from fastprune.common.stages.run import run_stage

    check_quantize(args.quantize)  # every check before any work: one line and exit 2 on bad input
    pruned = check_model_folder(args.pruned)
    output = check_output(args.output, args.overwrite)
    info = run_stage("onnx", output, {"quantize": args.quantize, "opset": args.opset}, pruned=pruned)
    kind = "int8 (dynamic, per channel)" if info["quantization"] == "int8-dynamic" else "fp32"
    print(json.dumps({k: info[k] for k in ("quantization", "per_channel", "max_abs_diff_vs_torch", "seconds")}))
    print(
        f"fastprune: {kind} ONNX model written to {output}/model.onnx (with config.json and the tokenizer); "
        f"load it with onnxruntime.InferenceSession or optimum's ORTModelFor....from_pretrained('{output}')"
    )
    return 0


COMMANDS = {"onnx": (_add_onnx, "write the ONNX folder of a pruned model (fp32 or int8) for ONNX Runtime / Optimum")}
