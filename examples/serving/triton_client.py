"""Classify text with a pruned model's ONNX export served by Triton (or KServe's Triton runtime), V2 protocol.

Triton runs the ONNX graph only: the text is tokenized here, with the tokenizer saved beside ``model.onnx``, and the
label names come from that folder's ``config.json``. Needs transformers (for the tokenizer) and numpy, not torch::

    python triton_client.py --url http://localhost:8000/v2/models/fastprune-sst2/infer --folder out/onnx \\
        "a gorgeous, witty, seductive movie" "the movie is a disaster"
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer


def v2_request(tokenizer, texts: list[str], max_length: int = 128) -> dict:
    """The V2 inference request: one INT64 tensor per tokenizer output (input_ids, attention_mask and, for BERT-like
    models, token_type_ids: the ONNX model's inputs), shape [batch, sequence]."""
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {
        "inputs": [
            {
                "name": name,
                "shape": list(encoded[name].shape),
                "datatype": "INT64",
                "data": encoded[name].astype(np.int64).flatten().tolist(),
            }
            for name in tokenizer.model_input_names
            if name in encoded
        ]
    }


def labels(response: dict, id2label: dict) -> list[tuple[str, float]]:
    """(label name, probability) per text, from the ``logits`` output of a V2 inference response."""
    output = next(o for o in response["outputs"] if o["name"] == "logits")
    logits = np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    return [
        (str(id2label.get(str(int(i)), int(i))), float(p.max()))
        for i, p in zip(probabilities.argmax(-1), probabilities, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="http://HOST/v2/models/NAME/infer")
    parser.add_argument("--folder", required=True, type=Path, help="the ONNX folder (tokenizer and config.json)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds")
    parser.add_argument("texts", nargs="+")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.folder, trust_remote_code=False)  # the tokenizer needs no code
    id2label = json.loads((args.folder / "config.json").read_text()).get("id2label", {})
    request = urllib.request.Request(
        args.url,
        data=json.dumps(v2_request(tokenizer, args.texts)).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=args.timeout) as answer:
        for text, (label, probability) in zip(args.texts, labels(json.load(answer), id2label), strict=True):
            print(f"{label}\t{probability:.3f}\t{text}")


if __name__ == "__main__":
    main()
