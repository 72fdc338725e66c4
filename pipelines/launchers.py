"""How ``fastprune trigger`` runs the pipeline for one source model version: on a Kubeflow cluster (a run is
started; its state is asked on the next trigger) or here with kfp.local (the run finishes before the next version).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..common.ops.trigger import Launched, SourceVersion
from .params import validate_params
from .submit import ClusterConfig, SubmitError, SubmitOptions, Target, prepare, run_state

log = logging.getLogger(__name__)


def _run_name(pipeline: str, version: SourceVersion) -> str:
    return f"{pipeline}-{re.sub(r'[^A-Za-z0-9._-]+', '-', version.name)}-v{version.version}"


class ClusterLauncher:
    """Starts one run per version on a Kubeflow Pipelines cluster; the pipeline is uploaded once per trigger."""

    def __init__(self, cluster: ClusterConfig, options: SubmitOptions, client=None):
        self.cluster, self.options, self._client = cluster, options, client
        self._target: Target | None = None
        self.where = f"on {cluster.host}"

    @property
    def client(self):
        if self._client is None:
            self._client = self.cluster.client()
        return self._client

    def state(self, run_id: str) -> str | None:
        try:
            return run_state(self.client, run_id)
        except SubmitError as e:
            log.warning("cannot read the state of run %s: %s", run_id, e)
            return None

    def launch(self, version: SourceVersion, arguments: dict) -> Launched:
        if self._target is None:
            self._target = prepare(self.cluster, self.options, self.client)
        params = validate_params(self._target.params_model, arguments, f"the parameters for {version.uri}")
        submitted = self._target.start(params, run_name=_run_name(self._target.pipeline.pipeline_name, version))
        return Launched(submitted.id, submitted.url)


class LocalLauncher:
    """Runs the pipeline here with kfp.local, one version after the other."""

    def __init__(self, pipeline: str, pipeline_root: str | Path):
        from .submit import pipeline_factory

        self.pipeline, self.pipeline_root = pipeline, Path(pipeline_root)
        self.params_model = pipeline_factory(pipeline)[1]  # type: ignore[arg-type]
        self.where = "locally (kfp.local)"

    def state(self, run_id: str) -> str | None:
        return None  # a local run either finished in its trigger or was interrupted

    def launch(self, version: SourceVersion, arguments: dict) -> Launched:
        from .local import PipelineFailed, run_local

        params = validate_params(self.params_model, arguments, f"the parameters for {version.uri}")
        try:
            run = run_local(params.arguments(), self.pipeline_root, self.pipeline)
        except PipelineFailed as e:
            return Launched(f"local-{version.name}-v{version.version}", finished=True, error=str(e))
        r = run.registration
        run_id = (r.get("params") or {}).get("pipeline_run") or run.folder.name
        return Launched(run_id, str(run.folder), finished=True, pruned_model=r.get("model_uri"), gate=r.get("gate"))
