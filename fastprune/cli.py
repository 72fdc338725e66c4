"""The ``fastprune`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from fastprune.common.errors import FastpruneError

log = logging.getLogger("fastprune")


def _add_prune(sub) -> None:
    p = sub.add_parser("prune", help="prune a fine-tuned model end to end")
    p.add_argument("--model", required=True, help="fine-tuned model folder (or hub id)")
    p.add_argument("--task", required=True, help="sst2, mrpc, stsb, rte, qnli, mnli, qqp, cola, squad, squad_v2")
    p.add_argument("--train-file", required=True, help="training data (tsv/csv/json/jsonl/parquet) or hub id")
    p.add_argument("--dev-file", help="dev data for evaluation")
    p.add_argument("--constraint", type=float, required=True, help="fraction of FLOPs/latency to keep, in (0, 1)")
    p.add_argument("--metric", choices=["flops", "latency"], default="flops")
    p.add_argument("--num-samples", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-replace", action="store_true", help="sample without replacement")
    p.add_argument("--batch-size", type=int, help="mini-batch size of the sample")
    p.add_argument("--max-length", type=int)
    p.add_argument("--seq-len", type=float, help="sequence length of the MAC model (default: sample mean)")
    p.add_argument("--teacher", choices=["schedule", "dense"], default="schedule")
    p.add_argument("--tuning-policy", choices=["stop", "ridge"], default="stop")
    p.add_argument("--no-tuning", action="store_true")
    p.add_argument("--no-rearrange", action="store_true")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--text-columns", nargs="+")
    p.add_argument("--label-column")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--output", required=True, help="output folder: model/, masks.safetensors, summary.json")
    p.set_defaults(func=_prune)


def _prune(args) -> int:
    from fastprune.common.config import PruneConfig, SampleConfig, TuningConfig
    from fastprune.common.prune import format_summary, prune

    cfg = PruneConfig(
        model=args.model,
        task=args.task,
        train_file=args.train_file,
        dev_file=args.dev_file,
        constraint=args.constraint,
        metric=args.metric,
        seq_len=args.seq_len,
        sample=SampleConfig(
            num_samples=args.num_samples,
            seed=args.seed,
            replace=not args.no_replace,
            batch_size=args.batch_size,
            max_length=args.max_length,
        ),
        tuning=TuningConfig(enabled=not args.no_tuning, teacher=args.teacher, policy=args.tuning_policy),
        rearrange=not args.no_rearrange,
        device=args.device,
        text_columns=args.text_columns,
        label_column=args.label_column,
        trust_remote_code=args.trust_remote_code,
    )
    summary = prune(cfg, args.output)
    print(format_summary(summary))
    print(f"  model: {args.output}/model   summary: {args.output}/summary.json")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="prune the embedded default (MiniLM fine-tuned on bundled SST-2 data)")
    p.add_argument("--constraint", type=float, default=0.5)
    p.add_argument("--num-samples", type=int, default=2048)
    p.add_argument("--output", default="runs/demo")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from fastprune.common.config import PruneConfig, SampleConfig
    from fastprune.common.prune import format_summary, prune
    from fastprune.defaults import SST2_DEV, SST2_TRAIN, finetuned_minilm

    cfg = PruneConfig(
        model=str(finetuned_minilm()),
        task="sst2",
        train_file=str(SST2_TRAIN),
        dev_file=str(SST2_DEV),
        constraint=args.constraint,
        sample=SampleConfig(num_samples=args.num_samples),
    )
    print(format_summary(prune(cfg, args.output)))
    print(f"  model: {args.output}/model   summary: {args.output}/summary.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastprune", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prune(sub)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (FastpruneError, ValidationError) as e:
        print(f"fastprune: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
