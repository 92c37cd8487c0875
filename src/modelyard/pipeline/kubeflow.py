"""Compile a Pipeline to Kubeflow Pipelines v2 YAML: one lightweight Python component per step.

Nothing here knows the recommender or the detector. For every `Step` of the graph a component function is
generated from the step function's signature (names, primitive types) and its declared outputs; its body
only imports modelyard and calls `call_step(target, step, kwargs)`, which finds the same step function the
local runner calls (`modelyard.<target>.pipeline.build()`) and returns its outputs as a NamedTuple.
The generated source is registered in `linecache` so that KFP's `inspect.getsource` sees it.

Cluster build (`cluster=True`): a PVC made by `kfp.kubernetes.CreatePVC` is mounted in every step at
`ClusterOptions.mount_path`, which is also every step's `volume` argument; `tracking_uri` and `lake`
default to the PVC. Local build (`cluster=False`, for `kfp.local`): no PVC ops, `volume` is a pipeline
parameter. KFP's execution cache is off for every task: see the README, "Run it on Kubeflow".
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import keyword
import linecache
import math
import pkgutil
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

from modelyard.errors import ModelyardError, user_errors
from modelyard.params import as_type
from modelyard.pipeline.graph import Pipeline, Step

PRIMITIVES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}
ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod", "ReadOnlyMany")
CLUSTER_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_KEYS = ("AWS_SESSION_TOKEN",)  # temporary credentials only
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")  # those it holds


@dataclass(frozen=True)
class ClusterOptions:
    """How the compiled pipeline meets the cluster.

    image          container image of every step (the repo's Dockerfile: modelyard, kfp and torch installed)
    pvc_size       size of the shared volume (PVC) created for each run
    storage_class  its StorageClass; "" = the cluster's default class
    access_mode    ReadWriteOnce (steps run one after another) or ReadWriteMany
    mount_path     where every step mounts the PVC; also every step's `volume` argument
    delete_pvc     delete the PVC after the last step (keep it to inspect or reuse a run's volume)
    existing_pvc   mount this PVC (made once, e.g. with kubectl) instead of creating one per run: downloads,
                   the lake and a SQLite MLflow store outlive the run and the next run reuses them
    s3_secret      Kubernetes Secret holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and, if it has one,
                   AWS_SESSION_TOKEN), set as env in every step (for an s3:// lake); "" = none
    s3_endpoint    MODELYARD_S3_ENDPOINT in every step (MinIO: http://minio-service.kubeflow:9000); "" = none
    mlflow_secret  Kubernetes Secret with MLFLOW_TRACKING_USERNAME / _PASSWORD or MLFLOW_TRACKING_TOKEN for
                   a tracking server that asks for them (never a run parameter: the KFP UI shows those); "" = none
    """

    image: str = "modelyard:latest"
    pvc_size: str = "10Gi"
    storage_class: str = ""
    access_mode: str = "ReadWriteOnce"
    mount_path: str = "/mnt/pipeline"
    delete_pvc: bool = False
    s3_secret: str = ""
    s3_endpoint: str = ""
    existing_pvc: str = ""
    mlflow_secret: str = ""

    def validate(self) -> None:
        if not self.image.strip():
            raise ValueError("--image must name a container image")
        if not PurePosixPath(self.mount_path).is_absolute():
            raise ValueError(f"--mount-path must be an absolute path, not {self.mount_path!r}")
        if not str(PurePosixPath(self.mount_path)).strip("/"):  # "/", "//", "///"
            raise ValueError("--mount-path / would mount the volume over the container's root; use a folder such as /mnt/pipeline")
        if self.access_mode not in ACCESS_MODES:
            raise ValueError(f"--access-mode {self.access_mode!r} is not one of {', '.join(ACCESS_MODES)}")
        if not re.fullmatch(r"\d+(\.\d+)?([EPTGMk]i?)?", self.pvc_size.strip()) or not float(re.sub(r"[^\d.]", "", self.pvc_size)):
            raise ValueError(f"--pvc-size {self.pvc_size!r} is not a Kubernetes quantity such as 10Gi")
        for option, name in (("--existing-pvc", self.existing_pvc), ("--s3-secret", self.s3_secret),
                             ("--mlflow-secret", self.mlflow_secret), ("--storage-class", self.storage_class)):
            if name and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name):
                raise ValueError(f"{option} {name!r} is not a Kubernetes object name (lower case letters, digits, '-', '.')")
        if self.existing_pvc and self.delete_pvc:
            raise ValueError(f"--delete-pvc with --existing-pvc {self.existing_pvc} would delete a volume this pipeline did not create")

    @property
    def volume(self) -> str:
        return str(PurePosixPath(self.mount_path))

    def tracking_uri(self) -> str:
        return f"sqlite:///{PurePosixPath(self.volume) / 'mlflow.db'}"

    def lake(self) -> str:
        return str(PurePosixPath(self.volume) / "lake")


# ---------------------------------------------------------------------------------------------------------------
# Finding a target's pipeline (at compile time and inside the component at run time)
# ---------------------------------------------------------------------------------------------------------------

def known_targets() -> list[str]:
    import modelyard

    return sorted(m.name for m in pkgutil.iter_modules(modelyard.__path__)
                  if m.ispkg and (Path(modelyard.__path__[0]) / m.name / "pipeline.py").exists())


def load_pipeline(target: str, preset: str = "textbook") -> Pipeline:
    """`modelyard.<target>.pipeline.build()` (with `preset` when build takes one)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", target or ""):
        raise ModelyardError(f"unknown pipeline {target!r}; known: {', '.join(known_targets())}")
    name = f"modelyard.{target}.pipeline"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name in (f"modelyard.{target}", name):
            raise ModelyardError(f"unknown pipeline {target!r}; known: {', '.join(known_targets())}") from None
        raise
    build = getattr(module, "build", None)
    if not callable(build):
        raise ModelyardError(f"{name} has no build() function returning its Pipeline")
    if "preset" in inspect.signature(build).parameters:
        pipeline = build(preset=preset)
    elif preset not in ("", "textbook"):
        raise ModelyardError(f"the {target} pipeline has no presets (got --preset {preset})")
    else:
        pipeline = build()
    if not isinstance(pipeline, Pipeline):
        raise ModelyardError(f"{name}.build() returned a {type(pipeline).__name__}, not a Pipeline")
    return pipeline


# ---------------------------------------------------------------------------------------------------------------
# Run time: the body of every component
# ---------------------------------------------------------------------------------------------------------------

def _fill_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Empty `volume` / `lake` / `tracking_uri` get what the CLI would use (MODELYARD_WORKSPACE, MLFLOW_TRACKING_URI ...)."""
    if not any(k in kwargs and not kwargs[k] for k in ("volume", "lake", "tracking_uri")):
        return kwargs
    from modelyard.settings import Settings

    settings = Settings.resolve(workspace=kwargs.get("volume") or None)
    filled = dict(kwargs)
    for key, value in (("volume", settings.volume), ("lake", settings.lake), ("tracking_uri", settings.tracking_uri)):
        if key in filled and not filled[key]:
            filled[key] = value
    return filled


# Parameters fixed by `modelyard compile` rather than chosen per run: `preset` decides the hyperparameter
# defaults written into the YAML, so changing it in a run would label a run it does not describe.
COMPILE_TIME = frozenset({"preset"})


def call_step(target: str, step: str, kwargs: dict[str, Any], outputs: Sequence[tuple[str, str]] = (),
              metrics: Any = None, preset: str = "textbook", check: bool = False):
    """Run one step of `modelyard.<target>.pipeline` as a KFP component does.

    Calls the step function with `kwargs` (coerced to its annotated types), logs its numeric outputs to
    `metrics` (a KFP `Output[Metrics]`) when given, prints its outputs, and returns the `outputs`
    (name, type name) as a tuple in that order (None when there are none). `check`: `kwargs` hold every
    run parameter; the pipeline's check_params sees them all first, and the step gets its own. A ModelyardError ends the
    process with its message and exit status 1, no traceback (so do a ValueError and MLflow's refusals, as in the CLI).
    """
    try:
        pipeline = load_pipeline(target, preset)
        fn = pipeline.step(step).fn
        hints = _type_hints(fn)
        filled = _fill_settings(kwargs)
        if check and pipeline.check_params is not None:
            pipeline.check_params({**pipeline.params, **{k: v for k, v in filled.items() if k in pipeline.params}})
        accepted = inspect.signature(fn).parameters
        args = {k: as_type(v, hints[k], f"{step}.{k}") if hints.get(k) in PRIMITIVES.values() else v
                for k, v in filled.items() if k in accepted}
        if "preset" in accepted and "preset" in pipeline.params:
            args["preset"] = preset  # fixed when the pipeline was compiled, as its hyperparameter defaults
        print(f"modelyard: {target}.{step}", flush=True)
        result = fn(**args) or {}
        print("modelyard outputs: " + json.dumps(result, default=str, sort_keys=True), flush=True)
        if metrics is not None:
            for name, value in result.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    metrics.log_metric(name, float(value))
        if not outputs:
            return None
        missing = [name for name, _ in outputs if name not in result]
        if missing:
            raise ModelyardError(f"step {step} of {target} returned no {', '.join(missing)} (it returned {', '.join(result) or 'nothing'})")
        return tuple(as_type(result[name], PRIMITIVES[typ], f"output {step}.{name}") for name, typ in outputs)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


# ---------------------------------------------------------------------------------------------------------------
# Compile time: a plan per step, generated component sources, the pipeline function
# ---------------------------------------------------------------------------------------------------------------

def _type_hints(fn: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to what the defaults say
        return {}


def _value_type(value: Any, what: str) -> type:
    for typ in (bool, int, float, str):  # bool before int: True is an int
        if isinstance(value, typ):
            return typ
    raise ValueError(f"{what}: default {value!r} is not a str, int, float or bool")


def _identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name)
    if not ident or ident[0].isdigit() or keyword.iskeyword(ident):
        ident = f"step_{ident}"
    return ident


@dataclass
class StepPlan:
    step: Step
    function_name: str
    inputs: dict[str, type]  # component input -> type (the type of what feeds it)
    outputs: list[tuple[str, type]]  # NamedTuple outputs in order
    metrics_name: str | None  # name of the Output[Metrics] argument, None when the step has no metrics
    checks: bool = False  # the first step: it also receives every run parameter and checks them all before any work


@dataclass
class Plan:
    target: str
    pipeline: Pipeline
    cluster: bool
    params: dict[str, tuple[type, Any]]  # pipeline parameter -> (type, default)
    steps: list[StepPlan]


def plan(pipeline: Pipeline, target: str | None = None, options: ClusterOptions | None = None,
         cluster: bool = True) -> Plan:
    """Types and wiring of every component and pipeline parameter, derived from the Pipeline graph."""
    options = options or ClusterOptions()
    target = target or pipeline.name
    hints = {s.name: _type_hints(s.fn) for s in pipeline.steps}

    def annotated(step: Step, arg: str) -> type | None:
        typ = hints[step.name].get(arg)
        if typ is None:
            return None
        if typ not in PRIMITIVES.values():
            raise ValueError(f"step {step.name}: argument {arg!r} is a {typ}; step arguments must be str, int, float or bool")
        return typ

    # Pipeline parameters: the type the steps read them as, else the default's type.
    params: dict[str, tuple[type, Any]] = {}
    for name, default in pipeline.params.items():
        if (cluster and name == "volume") or name in COMPILE_TIME:
            continue
        if cluster and name == "tracking_uri":
            default = options.tracking_uri()
        elif cluster and name == "lake":
            default = options.lake()
        readers = {annotated(s, name) for s in pipeline.steps if name in pipeline.step_params(s)} - {None}
        if len(readers) > 1:
            raise ValueError(f"parameter {name!r} is read as {' and '.join(sorted(t.__name__ for t in readers))} by different steps")
        typ = readers.pop() if readers else _value_type(default, f"parameter {name}")
        given = _value_type(default, f"parameter {name}")
        if given is not typ and not (typ is float and given is int):
            raise ValueError(f"parameter {name!r}: default {default!r} is a {given.__name__}, the steps read a {typ.__name__}")
        params[name] = (typ, typ(default))

    # Outputs: typed by the argument they feed; otherwise float for a metrics step, else str.
    output_types: dict[tuple[str, str], type] = {}
    for step in pipeline.steps:
        for arg, ref in step.inputs.items():
            up, out = ref.split(".", 1)
            typ = annotated(step, arg) or str
            if output_types.setdefault((up, out), typ) is not typ:
                raise ValueError(f"output {ref} feeds arguments of different types ({output_types[(up, out)].__name__}, {typ.__name__})")

    steps: list[StepPlan] = []
    for step in pipeline.steps:
        names = list(dict.fromkeys([*step.outputs, *(o for (u, o) in output_types if u == step.name)]))
        outputs = [(o, output_types.get((step.name, o), float if getattr(step, "metrics", False) else str)) for o in names]
        inputs: dict[str, type] = {}
        for arg in step.signature().parameters:
            if arg in step.inputs:
                up, out = step.inputs[arg].split(".", 1)
                inputs[arg] = output_types[(up, out)]
            elif cluster and arg == "volume" and "volume" in pipeline.params:
                inputs[arg] = str
            elif arg in params:
                inputs[arg] = params[arg][0]
        for arg in inputs:
            if not arg.isidentifier() or keyword.iskeyword(arg):
                raise ValueError(f"step {step.name}: argument {arg!r} cannot be a component input")
        metrics_name = None
        if getattr(step, "metrics", False):
            metrics_name = next(n for n in ("metrics", "kfp_metrics", "step_metrics") if n not in inputs and n not in names)
        steps.append(StepPlan(step, _identifier(step.name), inputs, outputs, metrics_name))
    if steps and pipeline.check_params is not None:
        # as the local runner does before any step: the first pod refuses bad run parameters, not the pod that reads them
        first = steps[0]
        first.inputs.update({name: typ for name, (typ, _) in params.items() if name not in first.inputs})
        first.checks = True
    return Plan(target, pipeline, cluster, params, steps)


def _docstring(fn: Callable) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n", 1)[0].strip()


def component_source(step_plan: StepPlan, target: str, preset: str = "textbook") -> str:
    """The Python source of one step's lightweight component (what KFP embeds in the YAML)."""
    args = [f"{name}: {typ.__name__}" for name, typ in step_plan.inputs.items()]
    if step_plan.metrics_name:
        args.append(f"{step_plan.metrics_name}: Output[Metrics]")
    ret = ""
    if step_plan.outputs:
        fields = ", ".join(f"({name!r}, {typ.__name__})" for name, typ in step_plan.outputs)
        ret = f" -> NamedTuple('Outputs', [{fields}])"
    kwargs = "{" + ", ".join(f"{name!r}: {name}" for name in step_plan.inputs) + "}"
    outputs = [(name, typ.__name__) for name, typ in step_plan.outputs]
    extra = f", metrics={step_plan.metrics_name}" if step_plan.metrics_name else ""
    if preset not in ("", "textbook"):
        extra += f", preset={preset!r}"
    if step_plan.checks:
        extra += ", check=True"
    doc = _docstring(step_plan.step.fn) or f"The {step_plan.step.name} step of the {target} pipeline."
    return (
        f"def {step_plan.function_name}({', '.join(args)}){ret}:\n"
        f"    {doc!r}\n"
        f"    from modelyard.pipeline.kubeflow import call_step\n"
        f"    return call_step({target!r}, {step_plan.step.name!r}, {kwargs}, outputs={outputs!r}{extra})\n"
    )


def _define(source: str, function_name: str, label: str, namespace: dict[str, Any]) -> Callable:
    """exec `source` under a pseudo file name registered in linecache, so inspect.getsource finds it."""
    filename = f"<modelyard-kfp {label} {hashlib.sha1(source.encode()).hexdigest()[:10]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 - our own generated source
    return namespace[function_name]


def make_components(p: Plan, image: str, preset: str = "textbook") -> dict[str, Any]:
    """Step name -> KFP component (a PythonComponent) running in `image`."""
    from typing import NamedTuple

    from kfp import dsl
    from kfp.dsl import Metrics, Output

    components = {}
    for sp in p.steps:
        source = component_source(sp, p.target, preset)
        fn = _define(source, sp.function_name, f"{p.target}.{sp.step.name}",
                     {"NamedTuple": NamedTuple, "Output": Output, "Metrics": Metrics, "__name__": f"modelyard_kfp_{p.target}"})
        # kfp is in the image (modelyard depends on it): no pip install when the pod starts.
        components[sp.step.name] = dsl.component(fn, base_image=image, install_kfp_package=False)
    return components


def pipeline_source(p: Plan, function_name: str) -> str:
    args = [f"{name}: {typ.__name__} = {default!r}" for name, (typ, default) in p.params.items()]
    values = "{" + ", ".join(f"{name!r}: {name}" for name in p.params) + "}"
    return f"def {function_name}({', '.join(args)}):\n    _graph({values})\n"


def build_kfp_pipeline(pipeline: Pipeline, options: ClusterOptions | None = None, cluster: bool = True,
                       target: str | None = None, preset: str = "textbook"):
    """The KFP pipeline (a `@dsl.pipeline` GraphComponent) of `pipeline`.

    cluster=True: CreatePVC + mount_pvc on every step (+ DeletePVC), volume = the mount path.
    cluster=False: plain components for `kfp.local`; `volume` is a pipeline parameter.
    `target` names the package whose `build()` the components call at run time (default: pipeline.name).
    """
    from kfp import dsl

    options = options or ClusterOptions()
    if cluster:
        options.validate()
    target = target or pipeline.name
    runtime = load_pipeline(target, preset)
    for step in pipeline.steps:
        try:
            same = runtime.step(step.name).fn is step.fn
        except KeyError:
            same = False
        if not same:
            raise ValueError(f"step {step.name} is not the {step.name} step of modelyard.{target}.pipeline.build(), "
                             "which the components call at run time")
    p = plan(pipeline, target, options, cluster)
    components = make_components(p, options.image, preset)

    def graph(values: dict[str, Any]) -> None:
        if cluster:
            from kfp import kubernetes
        if cluster and options.existing_pvc:
            pvc_name = options.existing_pvc
        elif cluster:
            # storage_class_name=None (documented as "the cluster's default") does not compile in kfp 2.17;
            # without it the SDK's own default ("") goes to the KFP driver. See the README (Run it on Kubeflow).
            storage = {"storage_class_name": options.storage_class} if options.storage_class else {}
            pvc = kubernetes.CreatePVC(
                pvc_name_suffix=f"-{_identifier(pipeline.name).replace('_', '-')}-volume",
                access_modes=[options.access_mode], size=options.pvc_size, **storage)
            pvc.set_display_name("create volume")
            pvc.set_caching_options(False)  # a cached CreatePVC fails; each run gets its own volume
            pvc_name = pvc.outputs["name"]
        tasks: dict[str, Any] = {}
        for sp in p.steps:
            kwargs = {}
            for arg in sp.inputs:
                if arg in sp.step.inputs:
                    up, out = sp.step.inputs[arg].split(".", 1)
                    kwargs[arg] = tasks[up].outputs[out]
                elif cluster and arg == "volume":
                    kwargs[arg] = options.volume
                else:
                    kwargs[arg] = values[arg]
            task = components[sp.step.name](**kwargs)
            task.set_display_name(sp.step.name)
            # KFP's cache key leaves out the PVC's contents and MLflow: a cache hit would skip work whose
            # results are not in this run's volume. modelyard's own reuse (reused: True) stays on.
            task.set_caching_options(False)
            for before in sp.step.after:
                task.after(tasks[before])
            if cluster:
                kubernetes.mount_pvc(task, pvc_name=pvc_name, mount_path=options.volume)
                for key, value in {**CLUSTER_ENV, "MODELYARD_WORKSPACE": options.volume}.items():
                    task.set_env_variable(key, value)
                if options.s3_endpoint:
                    task.set_env_variable("MODELYARD_S3_ENDPOINT", options.s3_endpoint)
                if options.s3_secret:
                    kubernetes.use_secret_as_env(task, secret_name=options.s3_secret,
                                                 secret_key_to_env={k: k for k in S3_SECRET_KEYS})
                    kubernetes.use_secret_as_env(task, secret_name=options.s3_secret, optional=True,
                                                 secret_key_to_env={k: k for k in S3_OPTIONAL_KEYS})
                if options.mlflow_secret:
                    kubernetes.use_secret_as_env(task, secret_name=options.mlflow_secret, optional=True,
                                                 secret_key_to_env={k: k for k in MLFLOW_SECRET_KEYS})
            tasks[sp.step.name] = task
        if cluster and options.delete_pvc:
            delete = kubernetes.DeletePVC(pvc_name=pvc_name).after(*tasks.values())
            delete.set_display_name("delete volume")
            delete.set_caching_options(False)

    function_name = _identifier(pipeline.name)
    fn = _define(pipeline_source(p, function_name), function_name, f"{target}.pipeline", {"_graph": graph})
    return dsl.pipeline(name=re.sub(r"[^a-z0-9-]", "-", pipeline.name.lower()),
                        description=pipeline.description or f"modelyard {pipeline.name} pipeline")(fn)


def compile_pipeline(target: str, output: Path, options: ClusterOptions, preset: str = "textbook") -> Path:
    """Write the KFP v2 YAML of `modelyard.<target>.pipeline.build()` (cluster build) to `output`."""
    from kfp import compiler

    pipeline = load_pipeline(target, preset)
    pipeline_func = build_kfp_pipeline(pipeline, options, cluster=True, target=target, preset=preset)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func, package_path=str(output))
    return output
