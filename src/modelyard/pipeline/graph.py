"""A pipeline is a graph of step functions; runners only resolve arguments and record what happened.

Each step function takes keyword arguments of primitive types and returns a dict of small outputs.
An argument is bound, in this order, to: an upstream output named in `Step.inputs` ("train.run_id"),
a pipeline parameter of the same name, or the function's own default.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Step:
    name: str
    fn: Callable[..., dict]
    inputs: dict[str, str] = field(default_factory=dict)  # argument -> "step.output"
    after: tuple[str, ...] = ()  # ordering-only dependencies (e.g. train after check)
    outputs: tuple[str, ...] = ()  # names of the outputs other steps may use
    metrics: bool = False  # its numeric outputs are metrics (Kubeflow: also an Output[Metrics] artifact)

    def signature(self) -> inspect.Signature:
        return inspect.signature(self.fn)

    def upstream(self) -> set[str]:
        return {ref.split(".", 1)[0] for ref in self.inputs.values()} | set(self.after)


@dataclass
class Pipeline:
    """Steps in execution order plus the pipeline's parameters and their defaults."""

    name: str
    steps: list[Step]
    params: dict[str, Any]
    description: str = ""
    check_params: Callable[[dict[str, Any]], None] | None = None  # raises ValueError before any step runs

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for step in self.steps:
            missing = step.upstream() - seen
            if missing:
                raise ValueError(f"step {step.name} depends on {sorted(missing)}, which do not run before it")
            for arg, p in step.signature().parameters.items():
                if arg not in step.inputs and arg not in self.params and p.default is inspect.Parameter.empty:
                    raise ValueError(f"step {step.name}: argument {arg!r} is bound to nothing")
            seen.add(step.name)

    def edges(self) -> set[tuple[str, str]]:
        return {(up, step.name) for step in self.steps for up in step.upstream()}

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def step_params(self, step: Step) -> list[str]:
        """The pipeline parameters a step reads."""
        return [a for a in step.signature().parameters if a not in step.inputs and a in self.params]

    def resolve(self, step: Step, params: dict[str, Any], outputs: dict[str, dict]) -> dict[str, Any]:
        """The keyword arguments of one step call."""
        args = {}
        for arg in step.signature().parameters:
            if arg in step.inputs:
                up, out = step.inputs[arg].split(".", 1)
                args[arg] = outputs[up][out]
            elif arg in params:
                args[arg] = params[arg]
        return args

    def merge_params(self, overrides: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(overrides) - set(self.params))
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for pipeline {self.name}; known: {', '.join(sorted(self.params))}")
        params = {**self.params, **overrides}
        if self.check_params is not None:
            self.check_params(params)
        return params
