"""An in-memory stand-in for ``kfp.Client`` (the Kubeflow Pipelines API server is the one thing the tests cannot
run): pipelines, versions, experiments, runs and recurring runs, with every call recorded."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import yaml


@dataclass
class FakeCluster:
    """The server's state, shared by every client made while the fake is installed."""

    clients: list[dict] = field(default_factory=list)  # the keyword arguments of each kfp.Client(...)
    pipelines: dict[str, str] = field(default_factory=dict)  # name -> id
    versions: dict[str, list[dict]] = field(default_factory=dict)  # pipeline id -> versions
    experiments: dict[str, str] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    fail: dict[str, Exception] = field(default_factory=dict)  # method name -> error to raise
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def client_class(self):
        cluster = self

        class Client:
            def __init__(self, **kwargs):
                cluster.clients.append(kwargs)

            def __getattribute__(self, name):
                if not name.startswith("_") and name in cluster.fail:
                    raise cluster.fail[name]
                if not name.startswith("_"):
                    cluster.calls.append(name)
                return object.__getattribute__(self, name)

            def get_pipeline_id(self, name):
                return cluster.pipelines.get(name)

            def upload_pipeline(self, pipeline_package_path, pipeline_name=None, description=None, namespace=None):
                pipeline_id = cluster.new_id("pipeline")
                cluster.pipelines[pipeline_name] = pipeline_id
                cluster.versions[pipeline_id] = [_version(cluster, pipeline_package_path, pipeline_name)]
                return SimpleNamespace(pipeline_id=pipeline_id)

            def upload_pipeline_version(
                self,
                pipeline_package_path,
                pipeline_version_name,
                pipeline_id=None,
                pipeline_name=None,
                description=None,
            ):
                version = _version(cluster, pipeline_package_path, pipeline_version_name)
                cluster.versions[pipeline_id].append(version)
                return SimpleNamespace(pipeline_id=pipeline_id, pipeline_version_id=version["id"])

            def list_pipeline_versions(self, pipeline_id, page_token="", page_size=10, sort_by="", filter=None):
                import json

                wanted = json.loads(filter)["predicates"][0]["stringValue"] if filter else None
                found = [v for v in cluster.versions.get(pipeline_id, []) if wanted in (None, v["name"])]
                return SimpleNamespace(
                    pipeline_versions=[
                        SimpleNamespace(pipeline_version_id=v["id"], display_name=v["name"]) for v in found[:page_size]
                    ]
                    or None
                )

            def create_experiment(self, name, description=None, namespace=None):
                cluster.experiments.setdefault(name, cluster.new_id("experiment"))
                return SimpleNamespace(experiment_id=cluster.experiments[name])

            def run_pipeline(
                self,
                experiment_id,
                job_name,
                pipeline_package_path=None,
                params=None,
                pipeline_id=None,
                version_id=None,
                pipeline_root=None,
                enable_caching=None,
                cache_key=None,
                service_account=None,
            ):
                run_id = cluster.new_id("run")
                cluster.runs[run_id] = {
                    "experiment_id": experiment_id,
                    "name": job_name,
                    "params": params,
                    "pipeline_id": pipeline_id,
                    "version_id": version_id,
                    "enable_caching": enable_caching,
                    "service_account": service_account,
                    "state": "RUNNING",
                }
                return SimpleNamespace(run_id=run_id)

            def create_recurring_run(
                self,
                experiment_id,
                job_name,
                description=None,
                start_time=None,
                end_time=None,
                interval_second=None,
                cron_expression=None,
                max_concurrency=1,
                no_catchup=None,
                params=None,
                pipeline_package_path=None,
                pipeline_id=None,
                version_id=None,
                enabled=True,
                pipeline_root=None,
                enable_caching=None,
                cache_key=None,
                service_account=None,
            ):
                job_id = cluster.new_id("recurring")
                cluster.recurring_runs[job_id] = {
                    "experiment_id": experiment_id,
                    "name": job_name,
                    "cron": cron_expression,
                    "max_concurrency": max_concurrency,
                    "no_catchup": no_catchup,
                    "params": params,
                    "pipeline_id": pipeline_id,
                    "version_id": version_id,
                }
                return SimpleNamespace(recurring_run_id=job_id)

            def get_run(self, run_id):
                if run_id not in cluster.runs:
                    raise ApiException(404, "Not Found", '{"message": "run not found"}')
                return SimpleNamespace(run_id=run_id, state=cluster.runs[run_id]["state"])

        return Client

    def version(self, version_id: str) -> dict:
        return next(v for versions in self.versions.values() for v in versions if v["id"] == version_id)


def _version(cluster: FakeCluster, package: str, name: str) -> dict:
    spec = next(yaml.safe_load_all(Path(package).read_text()))
    return {"id": cluster.new_id("version"), "name": name, "spec": spec}


class ApiException(Exception):
    """Like ``kfp_server_api.ApiException``: an HTTP status, a reason and a JSON body."""

    def __init__(self, status: int, reason: str, body: str = ""):
        super().__init__(f"({status})\nReason: {reason}")
        self.status, self.reason, self.body = status, reason, body


def install(monkeypatch) -> FakeCluster:
    """Replace ``kfp.Client`` with a client of a fresh fake cluster."""
    import kfp

    cluster = FakeCluster()
    monkeypatch.setattr(kfp, "Client", cluster.client_class())
    for name in (
        "KFP_HOST",
        "KF_PIPELINES_ENDPOINT",
        "KFP_NAMESPACE",
        "KFP_TOKEN",
        "KFP_TOKEN_FILE",
        "KFP_COOKIES",
        "KFP_SSL_CA_CERT",
        "KFP_UI_HOST",
        "KF_PIPELINES_UI_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    return cluster
