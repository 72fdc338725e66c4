"""The CI trigger: prune every version of a registered MLflow model that has not been pruned yet, once.

The state lives on each source model version, as tags:

- ``fastprune.pruned_run``: the pipeline run that pruned this version; set only on success, by the pipeline's
  register step (for a ``models:/`` source) and by the trigger. Its presence means "done": never pruned again.
- ``fastprune.status``: ``submitted`` (a cluster run started), ``running`` (a local run in progress),
  ``succeeded`` or ``failed``; ``fastprune.run_id`` the latest attempt's run, ``fastprune.attempts`` how many
  were made, ``fastprune.updated`` when (UTC, ISO 8601), ``fastprune.error`` why the last one failed.

A version is pruned when it has no status; skipped while its run is in flight (a cluster run is asked for its
state; a run nobody heard of for ``stale_after`` is retried); retried after a failure, up to ``max_attempts``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal, Protocol

from ..errors import ConfigError

log = logging.getLogger(__name__)

PRUNED_RUN = "fastprune.pruned_run"
PRUNED_MODEL = "fastprune.pruned_model"
STATUS = "fastprune.status"
RUN = "fastprune.run_id"
ATTEMPTS = "fastprune.attempts"
UPDATED = "fastprune.updated"
GATE = "fastprune.gate"
ERROR = "fastprune.error"
STAGES = ("None", "Staging", "Production", "Archived")
RUNNING_STATES = frozenset({"PENDING", "RUNNING", "CANCELING", "PAUSED"})
"""Kubeflow run states of a run in flight (``RUNTIME_STATE_UNSPECIFIED`` is not one: such a run is judged by the
age of its status, and retried once stale)."""
FAILED_STATES = frozenset({"FAILED", "CANCELED", "SKIPPED"})
"""Kubeflow run states of a run that ended without success (retried)."""


class TriggerError(ConfigError):
    """The source model, alias or stage does not exist, or the trigger's settings contradict each other."""


@dataclass(frozen=True)
class SourceVersion:
    name: str
    version: str
    tags: dict[str, str]
    status: str = "READY"  # MLflow's registration status

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class Launched:
    """What a launcher did with one version: a cluster run started (``finished`` False), or a local run done."""

    run_id: str
    url: str | None = None
    finished: bool = False
    pruned_model: str | None = None
    gate: str | None = None
    error: str | None = None


class Launcher(Protocol):
    where: str  # e.g. "on https://kfp.example.com" or "locally"

    def state(self, run_id: str) -> str | None:
        """The state of a run this launcher started (``SUCCEEDED``, ``RUNNING``, ``FAILED``...), or None when it
        cannot tell."""

    def launch(self, version: SourceVersion, arguments: dict) -> Launched: ...


Action = Literal["prune", "retry", "skip", "done"]


@dataclass(frozen=True)
class Decision:
    action: Action  # done: the run finished well since the last trigger; record it
    reason: str


@dataclass(frozen=True)
class Outcome:
    version: SourceVersion
    action: Literal["pruned", "submitted", "failed", "skipped", "would prune"]
    reason: str
    run_id: str | None = None
    url: str | None = None


# ----- reading and writing the tags ------------------------------------------------------------------------------
def _now() -> datetime:
    return datetime.now(timezone.utc)


def _set(client, version: SourceVersion | tuple[str, str], tags: dict[str, str | None]) -> None:
    """Set (or, for ``None``, delete) tags of a model version, and stamp ``fastprune.updated``."""
    from mlflow.exceptions import MlflowException

    name, number = (version.name, version.version) if isinstance(version, SourceVersion) else version
    for key, value in {**tags, UPDATED: _now().isoformat(timespec="seconds")}.items():
        if value is None:
            try:
                client.delete_model_version_tag(name, number, key)
            except MlflowException:  # not there: nothing to delete
                pass
        else:
            client.set_model_version_tag(name, number, key, str(value)[:500])


def mark_succeeded(
    client, name: str, version: str, run_id: str, pruned_model: str | None = None, gate: str | None = None
) -> None:
    """Record on the source version that ``run_id`` pruned it (into ``pruned_model``): it is never pruned again."""
    tags = {PRUNED_RUN: run_id, STATUS: "succeeded", RUN: run_id, ERROR: None}
    if pruned_model:
        tags[PRUNED_MODEL] = pruned_model
    if gate:
        tags[GATE] = gate
    _set(client, (name, version), tags)


def mark_failed(client, version: SourceVersion, run_id: str | None, error: str) -> None:
    _set(client, version, {STATUS: "failed", RUN: run_id, ERROR: error})


def source_versions(client, name: str, alias: str | None = None, stage: str | None = None) -> list[SourceVersion]:
    """The versions of registered model ``name`` to consider: all, the one behind ``alias``, or those in
    ``stage``; by increasing version number."""
    from mlflow.exceptions import MlflowException

    if alias and stage:
        raise TriggerError("give --alias or --stage, not both")
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        others = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise TriggerError(f"no registered model {name!r} in MLflow; registered models: {others or 'none'}") from None
    if alias:
        aliases = dict(getattr(model, "aliases", {}) or {})
        if alias not in aliases:
            raise TriggerError(
                f"registered model {name!r} has no alias {alias!r}; its aliases: {sorted(aliases) or 'none'}"
            )
        found = [client.get_model_version_by_alias(name, alias)]
    else:
        escaped = name.replace("'", "\\'")
        found = list(client.search_model_versions(f"name='{escaped}'"))
        if stage:
            match = {s.lower(): s for s in STAGES}.get(stage.lower())
            if match is None:
                raise TriggerError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
            found = [v for v in found if (v.current_stage or "None") == match]
    versions = [SourceVersion(name, str(v.version), dict(v.tags or {}), str(v.status or "READY")) for v in found]
    return sorted(versions, key=lambda v: int(v.version))


# ----- the decision ----------------------------------------------------------------------------------------------
def _age(tags: dict[str, str], now: datetime) -> timedelta | None:
    try:
        return now - datetime.fromisoformat(tags[UPDATED])
    except (KeyError, ValueError):
        return None


def decide(
    version: SourceVersion,
    state: Callable[[str], str | None],
    max_attempts: int,
    stale_after: timedelta,
    now: datetime | None = None,
) -> Decision:
    """Whether to prune ``version`` now, from its tags (and, for a run in flight, the run's ``state``)."""
    now = now or _now()
    tags = version.tags
    if tags.get(PRUNED_RUN):
        into = f" into {tags[PRUNED_MODEL]}" if tags.get(PRUNED_MODEL) else ""
        return Decision("skip", f"already pruned{into} by run {tags[PRUNED_RUN]}")
    if version.status != "READY":
        return Decision("skip", f"the version is not ready (MLflow status {version.status})")
    status, run_id = tags.get(STATUS), tags.get(RUN) or ""
    attempts = int(tags.get(ATTEMPTS) or 0)
    error = tags.get(ERROR, "")
    if status in ("submitted", "running"):
        current = state(run_id) if run_id else None
        if current == "SUCCEEDED":
            return Decision("done", f"run {run_id} succeeded")
        if current in RUNNING_STATES:
            return Decision("skip", f"run {run_id} is {current.lower()}")
        if current in FAILED_STATES:
            status, error = "failed", f"run {run_id} ended {current.lower()}"
        else:
            age = _age(tags, now)
            if age is not None and age < stale_after:
                return Decision("skip", f"{status} {_duration(age)} ago (run {run_id or 'starting'})")
            status, error = "failed", f"no news of run {run_id or '(none)'} for {_duration(age) if age else 'ever'}"
    if status == "failed":
        if attempts >= max_attempts:
            return Decision(
                "skip",
                f"failed {attempts} times, the limit (last: {error}); raise --max-attempts or "
                f"delete the tag {STATUS} to try again",
            )
        return Decision("retry", f"attempt {attempts + 1} of {max_attempts} after: {error}")
    if status == "succeeded":
        return Decision("skip", f"already pruned by run {run_id}")
    return Decision("prune", "not pruned yet")


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


# ----- the trigger ---------------------------------------------------------------------------------------------
def trigger(
    client,
    name: str,
    launcher: Launcher,
    arguments: dict,
    *,
    alias: str | None = None,
    stage: str | None = None,
    max_attempts: int = 3,
    stale_after: timedelta = timedelta(hours=24),
    limit: int | None = None,
    dry_run: bool = False,
    report: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Prune, with ``launcher``, every version of ``name`` (or the one behind ``alias``, or those in ``stage``) not
    pruned yet: one pipeline run per version, with ``arguments`` and ``model=models:/NAME/VERSION``."""
    if max_attempts < 1:
        raise TriggerError(f"max_attempts must be at least 1, got {max_attempts}")
    if arguments.get("registered_model_name") == name:
        raise TriggerError(
            f"the pruned models must be registered under another name than the source {name!r} "
            "(default: NAME-pruned), or the trigger would prune its own results"
        )
    outcomes: list[Outcome] = []
    launched = 0

    def done(outcome: Outcome) -> None:
        outcomes.append(outcome)
        log.info("version %s: %s (%s)", outcome.version.version, outcome.action, outcome.reason)
        if report:
            report(outcome)

    for version in source_versions(client, name, alias, stage):
        decision = decide(version, launcher.state, max_attempts, stale_after)
        if decision.action == "done":
            if not dry_run:
                mark_succeeded(client, name, version.version, version.tags[RUN])
            done(Outcome(version, "skipped", f"already pruned: {decision.reason}", version.tags[RUN]))
            continue
        if decision.action == "skip":
            done(Outcome(version, "skipped", decision.reason, version.tags.get(PRUNED_RUN) or version.tags.get(RUN)))
            continue
        if limit is not None and launched >= limit:
            done(Outcome(version, "skipped", f"over the limit of {limit} runs per trigger; next time"))
            continue
        if dry_run:
            done(Outcome(version, "would prune", decision.reason))
            continue
        launched += 1
        done(_launch(client, launcher, version, arguments, decision))
    return outcomes


def _launch(client, launcher: Launcher, version: SourceVersion, arguments: dict, decision: Decision) -> Outcome:
    attempts = int(version.tags.get(ATTEMPTS) or 0) + 1
    log.info("pruning %s %s (%s)", version.uri, launcher.where, decision.reason)
    _set(client, version, {STATUS: "running", RUN: None, ATTEMPTS: str(attempts), ERROR: None})
    try:
        result = launcher.launch(version, {**arguments, "model": version.uri})
    except Exception as e:
        mark_failed(client, version, None, f"could not start: {e}")
        raise
    if not result.finished:
        _set(client, version, {STATUS: "submitted", RUN: result.run_id})
        return Outcome(
            version, "submitted", f"{decision.reason}; run started {launcher.where}", result.run_id, result.url
        )
    if result.error is not None:
        mark_failed(client, version, result.run_id, result.error)
        return Outcome(version, "failed", result.error, result.run_id, result.url)
    mark_succeeded(client, version.name, version.version, result.run_id, result.pruned_model, result.gate)
    into = f"into {result.pruned_model} (gate {result.gate})" if result.pruned_model else "(no model registered)"
    return Outcome(version, "pruned", f"{decision.reason}; pruned {into}", result.run_id, result.url)


def summary(outcomes: list[Outcome]) -> str:
    """One line: how many versions were pruned, submitted, failed, skipped."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.action] = counts.get(o.action, 0) + 1
    if not outcomes:
        return "no versions to consider"
    return ", ".join(f"{n} {action}" for action, n in counts.items()) + f" (of {len(outcomes)} versions)"
