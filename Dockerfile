# One image for every fastprune pipeline step. Kubeflow Pipelines sets each step's command, so the image
# only needs the package installed; CMD is for people running it by hand.
FROM pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime

LABEL org.opencontainers.image.title="fastprune" \
      org.opencontainers.image.description="Post-training structured pruning of Transformers (Kubeflow Pipelines steps)" \
      org.opencontainers.image.licenses="Apache-2.0"

# No credentials here: S3/MinIO and MLflow settings (AWS_*, MLFLOW_*) come from the pipeline at run time.
# HF_HUB_OFFLINE is deliberately left unset so steps can download models from the Hugging Face Hub.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/fastprune \
    HF_HOME=/home/fastprune/.cache/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib

# Fixed non-root uid/gid (numeric USER below, so Kubernetes can enforce runAsNonRoot). Group 0 owns the
# writable folders so that clusters running the image under an arbitrary uid (OpenShift) can write too.
RUN groupadd --gid 10001 fastprune \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/fastprune \
       --shell /bin/bash fastprune \
    && mkdir -p /workspace /home/fastprune/.cache \
    && chown -R 10001:0 /workspace /home/fastprune \
    && chmod -R g=u /workspace /home/fastprune

COPY . /tmp/fastprune-src

# The constraint pins the base image's CUDA torch, so pip never replaces it with another build
# (pyproject asks for torch>=2.2, which it already satisfies).
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/torch-constraint.txt \
    && pip install --no-cache-dir --constraint /tmp/torch-constraint.txt /tmp/fastprune-src \
    && rm -rf /tmp/fastprune-src /tmp/torch-constraint.txt \
    && fastprune --help > /dev/null

USER 10001:10001
WORKDIR /workspace

CMD ["fastprune", "--help"]
