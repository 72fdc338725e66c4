#!/usr/bin/env bash
# Build what benchmarks/gpu/run.sh needs on a bare, offline GPU machine whose image has PyTorch and transformers
# but not the rest of fastprune's dependencies: .whl/ (wheels for Python 3.12) and .carry/ (the pretrained MiniLM
# in float16, to stay under a 64 MiB transfer, and the data the GPU runs read). Both folders are git-ignored via
# .git/info/exclude. Run from the repo root after ./setup.sh, with ../shared/data present.
set -euo pipefail
cd "$(dirname "$0")/../.."
for d in /.whl/ /.carry/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
rm -rf .whl .carry && mkdir -p .whl/alt .carry/minilm .carry/data/squad/v1.1 .carry/data/glue
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
get() {  # wheels for the GPU image's Python 3.12, pinned to the versions installed here
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$@"
}
for p in pydantic pydantic_core annotated_types typing_inspection datasets dill multiprocess; do
  get .whl "$p==$(version "$p")"
done
get .whl/alt "datasets<5"  # for an image whose pyarrow is older than datasets 5 needs (24)
model=$(.venv/bin/python -c "from fastprune.defaults import minilm_dir; print(minilm_dir())")
cp "$model"/{config.json,tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} .carry/minilm/
.venv/bin/python - "$model" <<'PY'
import sys
from safetensors.torch import load_file, save_file
weights = load_file(f"{sys.argv[1]}/model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
          ".carry/minilm/model.safetensors", metadata={"format": "pt"})
PY
cp ../shared/data/squad/v1.1/dev-v1.1.json .carry/data/squad/v1.1/
cp -r ../shared/data/glue/SST-2 .carry/data/glue/
du -sh .whl .carry
