"""The one place for the model registry: gate a challenger into `staging`, promote by hand, roll back.

Every decision is recorded: on the model version (the latest in tags `modelyard.decision.<alias>` and
`modelyard.reasons.<alias>`, all of them in `modelyard.log`, a JSON list), on the training run, and in
the alias history kept on the registered model (tag `modelyard.history.<alias>`), which is what
`rollback` walks back.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from modelyard.errors import RegistryError


@dataclass(frozen=True)
class Gate:
    """A signed threshold against the current alias holder.

    direction "lower": lower is better, pass when new - current <= threshold (rmse, threshold 0.0: may not rise)
    direction "higher": higher is better, pass when new - current >= threshold (precision, threshold -0.3)
    """

    metric: str
    direction: str
    threshold: float

    def check(self, new: float, current: float) -> tuple[bool, str]:
        if not math.isfinite(new):
            return False, f"{self.metric}: challenger's value {new} is not a number: FAIL"
        if not math.isfinite(current):
            return True, f"{self.metric}: {new:.4f} vs {current} (the current model's value is not a number): pass"
        delta = new - current
        if self.direction == "lower":
            ok, rule = delta <= self.threshold, f"<= {self.threshold:g}"
        elif self.direction == "higher":
            ok, rule = delta >= self.threshold, f">= {self.threshold:g}"
        else:
            raise ValueError(f"gate direction must be 'lower' or 'higher', not {self.direction!r}")
        verdict = "pass" if ok else "FAIL"
        return ok, f"{self.metric}: {new:.4f} vs {current:.4f}, delta {delta:+.4f} {rule}: {verdict}"


@dataclass
class Decision:
    model_name: str
    alias: str
    run_id: str | None
    version: str | None
    promoted: bool
    reasons: list[str] = field(default_factory=list)
    previous_version: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verb = "promoted to" if self.promoted else "not promoted to"
        head = f"{self.model_name} v{self.version} {verb} @{self.alias}"
        if self.previous_version and self.promoted:
            head += f" (was v{self.previous_version})"
        return head + "".join(f"\n  - {r}" for r in self.reasons)


def decide(new_metrics: dict[str, float], current_metrics: dict[str, float], gates: list[Gate]) -> tuple[bool, list[str]]:
    """Pure gate: every gate must pass; a metric missing on either side fails its gate."""
    passed, reasons = True, []
    for gate in gates:
        if gate.metric not in new_metrics or gate.metric not in current_metrics:
            passed = False
            reasons.append(f"{gate.metric}: missing on the {'challenger' if gate.metric not in new_metrics else 'current model'}: FAIL")
            continue
        ok, reason = gate.check(new_metrics[gate.metric], current_metrics[gate.metric])
        passed &= ok
        reasons.append(reason)
    return passed, reasons


def _client() -> MlflowClient:
    return MlflowClient()


def alias_name(alias: str, moving: bool = False) -> str:
    """`alias` without a leading `@` (users write `@prod`). `moving`: also refuse `latest`, which
    MLflow resolves to the newest version by itself and will not let anyone move."""
    name = alias.strip().removeprefix("@")
    if not name:
        raise RegistryError("an alias needs a name, e.g. staging or prod")
    if moving and name.lower() == "latest":
        raise RegistryError("@latest is MLflow's own name for the newest version and cannot be moved; use another alias")
    return name


def alias_version(model_name: str, alias: str):
    """The model version holding `alias`, or None when the model or the alias does not exist."""
    alias = alias_name(alias)
    try:
        return _client().get_model_version_by_alias(model_name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def describe_aliases(model_name: str) -> str:
    try:
        model = _client().get_registered_model(model_name)
    except MlflowException:
        names = [m.name for m in _client().search_registered_models()]
        return f"no registered model {model_name!r} (registered models: {', '.join(names) or 'none'})"
    aliases = ", ".join(f"@{a} -> v{v}" for a, v in sorted(model.aliases.items())) or "no aliases"
    return f"{model_name} has {aliases}"


def require_alias(model_name: str, alias: str):
    alias = alias_name(alias)
    version = alias_version(model_name, alias)
    if version is None:
        raise RegistryError(f"no model version with alias @{alias}: {describe_aliases(model_name)}")
    return version


def _history(model_name: str, alias: str) -> list[str]:
    tags = _client().get_registered_model(model_name).tags
    return json.loads(tags.get(f"modelyard.history.{alias}", "[]"))


TAG_LIMIT = 5000  # characters MLflow keeps in a tag value on every backend


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _append_log(model_name: str, version: str, entry: dict) -> None:
    """Add `entry` to the version's decision log (oldest entries dropped to fit one tag)."""
    client = _client()
    log = json.loads(client.get_model_version(model_name, version).tags.get("modelyard.log", "[]"))
    log.append(entry)
    while len(log) > 1 and len(json.dumps(log)) > TAG_LIMIT:
        log.pop(0)
    client.set_model_version_tag(model_name, version, "modelyard.log", json.dumps(log)[:TAG_LIMIT])


def decision_log(model_name: str, version: str) -> list[dict]:
    return json.loads(_client().get_model_version(model_name, str(version)).tags.get("modelyard.log", "[]"))


def _record(decision: Decision, verdict: str | None = None) -> None:
    client = _client()
    stamp = _stamp()
    verdict = verdict or ("promoted" if decision.promoted else "rejected")
    if decision.version:
        client.set_model_version_tag(decision.model_name, decision.version, f"modelyard.decision.{decision.alias}", f"{verdict} {stamp}")
        client.set_model_version_tag(decision.model_name, decision.version, f"modelyard.reasons.{decision.alias}", "; ".join(decision.reasons)[:TAG_LIMIT])
        _append_log(decision.model_name, decision.version, {"time": stamp, "alias": decision.alias, "decision": verdict,
                                                             "reasons": decision.reasons, "previous_version": decision.previous_version})
    if decision.run_id:
        client.set_tag(decision.run_id, f"modelyard.decision.{decision.alias}", f"{verdict}: v{decision.version}")
    if decision.promoted and verdict == "promoted":
        history = _history(decision.model_name, decision.alias) + [decision.version]
        client.set_registered_model_tag(decision.model_name, f"modelyard.history.{decision.alias}", json.dumps(history[-50:]))


def register(model_name: str, model_uri: str, run_id: str) -> str:
    """Register the run's model once; registering the same run again returns its existing version."""
    client = _client()
    existing = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    if existing:
        return str(min(int(v.version) for v in existing))
    return str(mlflow.register_model(model_uri, model_name).version)


def promote_if_better(model_name: str, run_id: str, model_uri: str, gates: list[Gate], alias: str = "staging",
                      comparable_on: tuple[str, ...] = ()) -> Decision:
    """Register the challenger and move `alias` to it if it passes every gate against the current holder.

    `comparable_on` names run tags or params (the dataset and its digest, the evaluation settings) that
    must be equal for the metrics to be comparable; a challenger that differs is registered but not promoted.
    """
    alias = alias_name(alias, moving=True)
    client = _client()
    current = alias_version(model_name, alias)
    if current is not None and current.run_id == run_id:
        return Decision(model_name, alias, run_id, str(current.version), False, [f"run {run_id} already holds @{alias}: nothing changed"], str(current.version))
    challenger = client.get_run(run_id).data
    new_metrics = dict(challenger.metrics)
    if current is None:
        passed, reasons = True, [f"no model held @{alias} yet: the first candidate is promoted"]
        missing = [g.metric for g in gates if g.metric not in new_metrics]
        not_finite = [g.metric for g in gates if g.metric in new_metrics and not math.isfinite(new_metrics[g.metric])]
        if missing:
            passed, reasons = False, [f"challenger run {run_id} has no {', '.join(missing)} (was it validated?)"]
        elif not_finite:
            passed, reasons = False, [f"challenger run {run_id} has non-finite {', '.join(not_finite)}: FAIL"]
    else:
        holder = client.get_run(current.run_id).data
        passed, reasons = decide(new_metrics, dict(holder.metrics), gates)
        values = {name: [run.tags.get(name, run.params.get(name)) for run in (challenger, holder)] for name in comparable_on}
        mismatches = [f"{name}: {new} vs {held} held by @{alias} (v{current.version}): "
                      f"not comparable, FAIL (register it under another model name)"
                      for name, (new, held) in values.items() if new != held]
        passed = passed and not mismatches
        reasons = mismatches + reasons
    version = register(model_name, model_uri, run_id)
    decision = Decision(model_name, alias, run_id, version, passed, reasons, str(current.version) if current else None)
    if passed:
        client.set_registered_model_alias(model_name, alias, version)
    _record(decision)
    return decision


def promote_version(model_name: str, alias: str, version: str | int, reason: str = "promoted by hand (no gate applied)") -> Decision:
    """Move `alias` to an existing version (how `prod` is promoted). No gate is applied."""
    alias = alias_name(alias, moving=True)
    client = _client()
    try:
        mv = client.get_model_version(model_name, str(version))
    except MlflowException:
        raise RegistryError(f"{model_name} has no version {version}: {describe_aliases(model_name)}") from None
    current = alias_version(model_name, alias)
    if current is not None and str(current.version) == str(version):
        return Decision(model_name, alias, mv.run_id, str(version), False, [f"v{version} already holds @{alias}: nothing changed"], str(version))
    client.set_registered_model_alias(model_name, alias, str(version))
    decision = Decision(model_name, alias, mv.run_id, str(version), True, [reason], str(current.version) if current else None)
    _record(decision)
    return decision


def rollback(model_name: str, alias: str = "prod") -> Decision:
    """Move `alias` back to the version that held it before the current one."""
    alias = alias_name(alias, moving=True)
    current = require_alias(model_name, alias)
    history = _history(model_name, alias)
    while history and history[-1] == str(current.version):
        history.pop()
    if not history:
        raise RegistryError(f"@{alias} of {model_name} has no earlier version to roll back to (now v{current.version})")
    target = history[-1]
    client = _client()
    client.set_registered_model_alias(model_name, alias, target)
    client.set_registered_model_tag(model_name, f"modelyard.history.{alias}", json.dumps(history))
    decision = Decision(model_name, alias, client.get_model_version(model_name, target).run_id, target, True,
                        [f"rolled back from v{current.version}"], str(current.version))
    _record(decision, verdict="rolled back to")
    _append_log(model_name, str(current.version), {"time": _stamp(), "alias": alias, "decision": "rolled back from",
                                                   "reasons": [f"@{alias} moved back to v{target}"], "previous_version": None})
    client.set_model_version_tag(model_name, str(current.version), f"modelyard.decision.{alias}", f"rolled back from {_stamp()}")
    return decision
