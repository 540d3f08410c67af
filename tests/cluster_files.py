"""What tests/test_cluster_files.py checks the files in cluster/ with: loaders for the YAML
documents, the Dockerfile and the README's commands; where each command runs ("sites") and what
it can see there; and validators, each returning a list of problems (empty: none).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from embedfleet.cli_parser import build_parser
from embedfleet.errors import ConfigError
from embedfleet.job import JobSpec

yaml = pytest.importorskip("yaml")  # PyYAML comes with ray

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
YAML_FILES = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))
DOCKERFILE = CLUSTER / "Dockerfile"
CLUSTER_README = CLUSTER / "README.md"

LAUNCHER_COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
KEY_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
LITERAL_KEYS = {
    "OpenAI-style key": re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    "Jina key": re.compile(r"\bjina_[A-Za-z0-9]{30,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "assigned secret": re.compile(
        r"(?i)\b\w*(api_key|token|secret|password)\w*\s*[:=]\s*['\"]?[A-Za-z0-9/+_-]{24,}"
    ),
}

# Field names of KubeRay's ray.io/v1 types (ray-operator/apis/ray/v1/*_types.go), including
# fields newer than the operator version these files need.
RAYCLUSTER_SPEC = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
    "autoscalerOptions", "headServiceAnnotations", "suspend", "managedBy",
    "gcsFaultToleranceOptions", "upgradeStrategy", "authOptions",
}  # fmt: skip
HEAD_GROUP_SPEC = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP_SPEC = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams",
    "template", "scaleStrategy", "idleTimeoutSeconds", "suspend",
}  # fmt: skip
AUTOSCALER_OPTIONS = {
    "resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts",
    "securityContext", "idleTimeoutSeconds", "upscalingMode", "version",
}  # fmt: skip
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
    "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy",
    "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
    "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend", "schedule",
}  # fmt: skip
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
UPSCALING_MODES = {"Default", "Aggressive", "Conservative"}


# ----------------------------------------------------------------------------- loading
def _load(path: Path) -> list[Any]:
    try:
        return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    except yaml.YAMLError:
        return []  # reported by test_every_yaml_file_parses


@cache
def documents() -> tuple[tuple[str, Any], ...]:
    return tuple((str(path.relative_to(REPO)), doc) for path in YAML_FILES for doc in _load(path))


def launcher_configs() -> list[tuple[str, dict]]:
    return [(where, doc) for where, doc in documents() if "available_node_types" in doc]


def objects(kind: str) -> list[tuple[str, dict]]:
    return [(where, doc) for where, doc in documents() if doc.get("kind") == kind]


def object_id(item: tuple[str, dict]) -> str:
    where, doc = item
    return f"{where}:{doc.get('kind', 'launcher')}/{doc.get('metadata', {}).get('name', '')}"


def configmap_files() -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: doc.get("data", {}) for _, doc in objects("ConfigMap")}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    if pending:
        instructions.append(("<unterminated>", pending))
    return instructions


def dockerfile_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    args = {}
    for keyword, rest in instructions:
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip("\"'")
    return args


def readme_commands(text: str) -> list[str]:
    """Lines of the README's shell code blocks (comments cut, continuations joined)."""
    blocks = re.findall(r"```(?:sh|bash|shell|console)\n(.*?)```", text, re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip().removeprefix("$ ")
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


# ------------------------------------------------------------------- commands and where they run
@dataclass(frozen=True)
class Site:
    """A command in a file, and what the machine or pod that runs it has."""

    where: str
    command: str | tuple[str, ...]
    files: Mapping[str, Mapping[str, str]] | None  # dir -> {name: text}; None: not known
    gpus: float | None  # GPUs its Ray cluster can offer; None: not known


@dataclass(frozen=True)
class Run:
    where: str
    program: str  # "embedfleet" or "ray"
    args: tuple[str, ...]
    files: Mapping[str, Mapping[str, str]] | None
    gpus: float | None


def simple_commands(command: str | tuple[str, ...] | list[str]) -> list[list[str]]:
    """The simple commands of a shell line, or of an exec-form argv; `sh -c` scripts too."""
    if isinstance(command, str):
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        argvs: list[list[str]] = [[]]
        for token in lexer:
            if set(token) <= set(";&|()<>"):
                argvs.append([])
            else:
                argvs[-1].append(token)
    else:
        argvs = [[str(token) for token in command]]
    result = []
    for argv in argvs:
        while argv and (argv[0] == "exec" or re.fullmatch(r"[A-Za-z_]\w*=\S*", argv[0])):
            argv = argv[1:]
        if argv and Path(argv[0]).name in ("sh", "bash") and "-c" in argv[:-1]:
            result += simple_commands(argv[argv.index("-c") + 1])
        elif argv:
            result.append(argv)
    return result


def ray_command(args: list[str]) -> Any:
    """Ray's own click command for `ray ARGS`, and ARGS parsed by it (click's errors raise)."""
    import click
    from ray.scripts.scripts import cli as ray_cli

    command: Any = ray_cli
    path = ["ray"]
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        sub = command.get_command(click.Context(command), name)
        if sub is None:
            raise click.UsageError(f"no such command: {' '.join([*path, name])}")
        command, path = sub, [*path, name]
    return command.make_context(" ".join(path), rest)


def runs(site: Site) -> Iterator[Run]:
    """The embedfleet and ray invocations at a site, following `ray job submit` and `ray exec`
    to the cluster they run on."""
    for argv in simple_commands(site.command):
        program = Path(argv[0]).name
        if program == "embedfleet":
            yield Run(site.where, program, tuple(argv[1:]), site.files, site.gpus)
        elif program == "ray":
            yield Run(site.where, program, tuple(argv[1:]), site.files, site.gpus)
            remote = remote_site(site.where, argv[1:])
            if remote is not None:
                yield from runs(remote)


def remote_site(where: str, args: list[str]) -> Site | None:
    """`ray job submit ... -- CMD` and `ray exec CONFIG CMD` run CMD on a cluster."""
    try:
        context = ray_command(args)
    except Exception:
        return None  # reported by test_ray_commands_parse_with_rays_own_cli
    params = context.params
    if args[:2] == ["job", "submit"] and params.get("entrypoint"):
        head = raycluster_head(params.get("address") or "")
        command = shlex.join(params["entrypoint"])
        files, gpus = (None, None) if head is None else head
        return Site(f"{where} (submitted to {params.get('address')})", command, files, gpus)
    if args[:1] == ["exec"] and params.get("cmd"):
        config = _load(REPO / params["cluster_config_file"])
        if not config:
            return Site(f"{where} (ray exec)", params["cmd"], None, None)
        files = launcher_files(config[0])
        return Site(f"{where} (ray exec)", params["cmd"], files, launcher_gpus(config[0]))
    return None


def raycluster_head(address: str) -> tuple[dict, float] | None:
    """Files and GPUs of the RayCluster whose head service `address` names."""
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    name = host.split(".")[0].removesuffix("-head-svc")
    for _, doc in objects("RayCluster"):
        if doc["metadata"]["name"] == name and host.split(".")[0].endswith("-head-svc"):
            spec = doc["spec"]
            return head_files(spec), kuberay_gpus(spec)
    return None


def launcher_files(config: dict) -> dict[str, dict[str, str]]:
    files: dict[str, dict[str, str]] = {}
    for remote, local in (config.get("file_mounts") or {}).items():
        source = REPO / local
        if source.is_dir():
            files[remote.rstrip("/")] = {p.name: p.read_text() for p in source.glob("*.toml")}
        elif source.is_file():
            directory, _, name = remote.rpartition("/")
            files.setdefault(directory, {})[name] = source.read_text()
    return files


def launcher_gpus(config: dict) -> float:
    return sum(
        node.get("max_workers", 0) * node.get("resources", {}).get("GPU", 0)
        for name, node in config["available_node_types"].items()
        if name != config.get("head_node_type")
    )


def container_files(pod: dict, container: dict) -> dict[str, dict[str, str]]:
    """What a container sees of the ConfigMaps mounted in it, by mount path."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    configmaps = configmap_files()
    files = {}
    for mount in container.get("volumeMounts", []):
        source = volumes.get(mount["name"], {}).get("configMap")
        if source is None:
            continue
        data = configmaps.get(source["name"], {})
        if source.get("items"):
            data = {item["path"]: data.get(item["key"], "") for item in source["items"]}
        files[mount["mountPath"].rstrip("/")] = data
    return files


def head_files(cluster_spec: dict) -> dict[str, dict[str, str]]:
    pod = cluster_spec["headGroupSpec"]["template"]["spec"]
    return container_files(pod, pod["containers"][0])


def container_gpus(container: dict) -> float:
    return float(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def kuberay_gpus(cluster_spec: dict) -> float:
    return sum(
        group.get("maxReplicas", 0)
        * group.get("numOfHosts", 1)
        * sum(container_gpus(c) for c in group["template"]["spec"]["containers"])
        for group in cluster_spec.get("workerGroupSpecs", [])
    )


def pod_specs(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every pod spec (a mapping with a list of containers) inside a document."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield path, node
        for key, value in node.items():
            yield from pod_specs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from pod_specs(value, f"{path}[{index}]")


def containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


@cache
def sites() -> tuple[Site, ...]:
    found = []
    for where, config in launcher_configs():
        files, gpus = launcher_files(config), launcher_gpus(config)
        scopes = [("", config)] + [
            (f"available_node_types.{name}.", node)
            for name, node in config["available_node_types"].items()
        ]
        for prefix, scope in scopes:
            for key in LAUNCHER_COMMAND_KEYS:
                for command in scope.get(key) or []:
                    found.append(Site(f"{where} {prefix}{key}", command, files, gpus))
    for where, doc in documents():
        if "kind" not in doc:
            continue
        label = object_id((where, doc))
        for _, pod in pod_specs(doc):
            for container in containers(pod):
                argv = (*container.get("command", []), *container.get("args", []))
                files = container_files(pod, container)
                if argv:
                    found.append(Site(f"{label} {container['name']}", argv, files, None))
                for hook in (container.get("lifecycle") or {}).values():
                    if "exec" in hook:
                        command = tuple(hook["exec"]["command"])
                        found.append(Site(f"{label} {container['name']} hook", command, {}, None))
        if doc["kind"] == "RayJob" and "rayClusterSpec" in doc["spec"]:
            cluster = doc["spec"]["rayClusterSpec"]
            found.append(
                Site(
                    f"{label} entrypoint",
                    doc["spec"].get("entrypoint", ""),
                    head_files(cluster),
                    kuberay_gpus(cluster),
                )
            )
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword in ("CMD", "ENTRYPOINT"):
            command = tuple(json.loads(rest)) if rest.startswith("[") else rest
            found.append(Site(f"cluster/Dockerfile {keyword}", command, {}, None))
    for command in readme_commands(CLUSTER_README.read_text()):
        found.append(Site("cluster/README.md", command, None, None))
    return tuple(found)


def all_runs(program: str) -> list[Run]:
    return [run for site in sites() for run in runs(site) if run.program == program]


def run_id(run: Run) -> str:
    return f"{run.where}: {run.program} {shlex.join(run.args)}"[:150]


# ------------------------------------------------------------------------------- checks
def embedfleet_problems(args: tuple[str, ...] | list[str]) -> list[str]:
    """What the real `embedfleet` parser says about ARGS (nothing if it accepts them)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(list(args))
    except SystemExit as exc:
        if exc.code:  # 0: --help / --version
            message = (stderr.getvalue().strip().splitlines() or [f"exit {exc.code}"])[-1]
            return [f"embedfleet {shlex.join(args)}: {message}"]
    return []


def job_spec_problems(run: Run, tmp_path: Path) -> list[str]:
    """A job command's spec must exist where it runs, load, and fit the cluster's GPUs."""
    arguments = build_parser().parse_args(list(run.args))
    if arguments.command not in ("run", "plan") or run.files is None:
        return []
    directory, _, name = arguments.spec.rpartition("/")
    text = run.files.get(directory, {}).get(name)
    if text is None:
        return [f"{arguments.spec} is not mounted there (mounted: {sorted(run.files)})"]
    (tmp_path / name).write_text(text)
    try:
        spec = JobSpec.from_toml(tmp_path / name)
    except ConfigError as exc:
        return [f"{arguments.spec}: {exc}"]
    gpus = (arguments.replicas or spec.fleet.replicas) * (
        arguments.num_gpus if arguments.num_gpus is not None else spec.fleet.num_gpus
    )
    if run.gpus is not None and gpus > run.gpus:
        return [f"{arguments.spec} asks for {gpus:g} GPUs, the cluster has at most {run.gpus:g}"]
    return []


def cron_field_problems(schedule: str) -> list[str]:
    """A standard 5-field cron schedule: minute hour day-of-month month day-of-week."""
    names = {
        3: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
        4: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    }
    bounds = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
    fields = schedule.split()
    if len(fields) != 5:
        return [f"{schedule!r} has {len(fields)} fields, not 5"]
    problems = []
    for index, (field, (low, high)) in enumerate(zip(fields, bounds, strict=True)):
        for part in field.split(","):
            match = re.fullmatch(r"(\*|\w+(?:-\w+)?)(?:/(\d+))?", part)
            if match is None or match.group(2) == "0":
                problems.append(f"{schedule!r}: bad field {field!r}")
                continue
            if match.group(1) == "*":
                continue
            for value in match.group(1).split("-"):
                offset = 1 if index == 3 else 0
                number = (
                    names[index].index(value.lower()) + offset
                    if value.lower() in names.get(index, [])
                    else int(value)
                    if value.isdigit()
                    else None
                )
                if number is None or not low <= number <= high:
                    problems.append(f"{schedule!r}: {value!r} out of {low}-{high}")
    return problems


def kubernetes_model_problems(data: Any, type_name: str, path: str = "") -> list[str]:
    """Unknown fields and wrong types against the kubernetes client's generated models."""
    import kubernetes.client as k8s

    if type_name.startswith("list["):
        if not isinstance(data, list):
            return [f"{path}: expected a list"]
        inner = type_name[5:-1]
        problems = []
        for index, item in enumerate(data):
            problems += kubernetes_model_problems(item, inner, f"{path}[{index}]")
        return problems
    if type_name.startswith(("dict(", "dict[")):  # dict(str, X) in older clients
        if not isinstance(data, dict):
            return [f"{path}: expected a mapping"]
        inner = type_name[type_name.index(",") + 1 : -1].strip()
        problems = []
        for key, value in data.items():
            problems += kubernetes_model_problems(value, inner, f"{path}.{key}")
        return problems
    primitives = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str}
    if type_name in primitives:
        ok = isinstance(data, primitives[type_name]) and not (
            type_name == "int" and isinstance(data, bool)
        )
        return [] if ok else [f"{path}: expected {type_name}, got {data!r}"]
    if type_name == "object":
        return []
    model = getattr(k8s, type_name)
    if not isinstance(data, dict):
        return [f"{path}: expected a {type_name} mapping"]
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    problems = []
    for key, value in data.items():
        if key not in by_json:
            problems.append(f"{path}.{key}: unknown field of {type_name}")
        else:
            problems += kubernetes_model_problems(
                value, model.openapi_types[by_json[key]], f"{path}.{key}"
            )
    return problems


def kubernetes_object_problems(data: dict, type_name: str, path: str = "") -> list[str]:
    """Field names, types and required fields, as the API server would check them."""
    import kubernetes.client as k8s

    problems = kubernetes_model_problems(data, type_name, path)

    class Response:
        def __init__(self, payload: dict) -> None:
            self.data = json.dumps(payload)

    try:
        k8s.ApiClient().deserialize(Response(data), type_name)
    except (ValueError, TypeError) as exc:
        problems.append(f"{path}: {exc}")
    return problems


def known_fields_problems(data: Any, allowed: set[str], path: str) -> list[str]:
    if not isinstance(data, dict):
        return [f"{path}: expected a mapping"]
    return [f"{path}.{key}: unknown field" for key in data if key not in allowed]


def raycluster_spec_problems(spec: dict, path: str = "spec") -> list[str]:
    problems = known_fields_problems(spec, RAYCLUSTER_SPEC, path)
    head = spec.get("headGroupSpec")
    if head is None:
        return [*problems, f"{path}.headGroupSpec: missing"]
    problems += known_fields_problems(head, HEAD_GROUP_SPEC, f"{path}.headGroupSpec")
    groups = [(f"{path}.headGroupSpec", head)] + [
        (f"{path}.workerGroupSpecs[{i}]", group)
        for i, group in enumerate(spec.get("workerGroupSpecs", []))
    ]
    for where, group in groups:
        if group is not head:
            problems += known_fields_problems(group, WORKER_GROUP_SPEC, where)
            if "groupName" not in group:
                problems.append(f"{where}.groupName: missing")
            low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
            if not low <= group.get("replicas", low) <= high:
                problems.append(f"{where}: needs minReplicas <= replicas <= maxReplicas")
        for key, value in (group.get("rayStartParams") or {}).items():
            if not isinstance(value, str):
                problems.append(f"{where}.rayStartParams.{key}: must be a string")
        if "template" not in group:
            problems.append(f"{where}.template: missing")
        else:
            problems += kubernetes_object_problems(
                group["template"], "V1PodTemplateSpec", f"{where}.template"
            )
    options = spec.get("autoscalerOptions") or {}
    problems += known_fields_problems(options, AUTOSCALER_OPTIONS, f"{path}.autoscalerOptions")
    if options.get("upscalingMode", "Default") not in UPSCALING_MODES:
        problems.append(f"{path}.autoscalerOptions.upscalingMode: not in {UPSCALING_MODES}")
    if not isinstance(spec.get("rayVersion"), str):
        problems.append(f"{path}.rayVersion: missing (a quoted version string)")
    return problems


def rayjob_spec_problems(spec: dict) -> list[str]:
    problems = known_fields_problems(spec, RAYJOB_SPEC, "spec")
    if ("rayClusterSpec" in spec) == ("clusterSelector" in spec):
        problems.append("spec: needs exactly one of rayClusterSpec and clusterSelector")
    if "rayClusterSpec" in spec:
        problems += raycluster_spec_problems(spec["rayClusterSpec"], "spec.rayClusterSpec")
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:
        problems.append(f"spec.submissionMode: {mode!r} not in {sorted(SUBMISSION_MODES)}")
    if mode != "InteractiveMode" and not str(spec.get("entrypoint", "")).strip():
        problems.append("spec.entrypoint: missing")
    if "ttlSecondsAfterFinished" in spec and not spec.get("shutdownAfterJobFinishes"):
        problems.append("spec.ttlSecondsAfterFinished: only used with shutdownAfterJobFinishes")
    return problems


def cronjob_problems(doc: dict) -> list[str]:
    spec = doc.get("spec", {})
    problems = cron_field_problems(str(spec.get("schedule", "")))
    if spec.get("concurrencyPolicy") != "Forbid":
        problems.append(f"concurrencyPolicy is {spec.get('concurrencyPolicy')!r}, not 'Forbid'")
    pod = spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        problems.append("a Job's pods need restartPolicy Never or OnFailure")
    for container in pod.get("containers", []):
        argv = (*container.get("command", []), *container.get("args", []))
        for command in simple_commands(argv):
            if command[:3] == ["ray", "job", "submit"] and "--no-wait" in command:
                problems.append("`ray job submit --no-wait` ends the Job at once: Forbid is moot")
    return problems


def env_problems(doc: Any) -> list[str]:
    """Key-like variables must come from a Secret, never a literal or a ConfigMap."""
    problems = []
    for path, pod in pod_specs(doc):
        for container in containers(pod):
            for variable in container.get("env", []):
                name = variable.get("name", "")
                secret = (variable.get("valueFrom") or {}).get("secretKeyRef")
                if KEY_NAME.search(name) and secret is None:
                    problems.append(f"{path} {container.get('name')}: {name} not from a Secret")
    return problems


def ray_containers(doc: dict) -> list[tuple[str, dict]]:
    """The Ray container (the first) of every head and worker group of a RayCluster/RayJob."""
    spec = (
        doc["spec"].get("rayClusterSpec", doc["spec"]) if doc["kind"] == "RayJob" else doc["spec"]
    )
    if "headGroupSpec" not in spec:
        return []
    groups = [("head", spec["headGroupSpec"])] + [
        (group.get("groupName", "?"), group) for group in spec.get("workerGroupSpecs", [])
    ]
    return [(name, group["template"]["spec"]["containers"][0]) for name, group in groups]


def key_variables_named_by_specs() -> set[str]:
    names = set()
    for data in configmap_files().values():
        for text in data.values():
            spec = tomllib.loads(text)
            config = spec.get("embedding", {}).get("config", {})
            if "api_key_env_var" in config:
                names.add(config["api_key_env_var"])
            for destination in spec.get("destination", []):  # e.g. Chroma's auth headers
                if "headers_env_var" in destination:
                    names.add(destination["headers_env_var"])
    return names


def secret_supply_problems(container: dict, needed: set[str]) -> list[str]:
    if any("secretRef" in source for source in container.get("envFrom", [])):
        return []  # every key of the Secret becomes a variable
    from_secrets = {
        variable["name"]
        for variable in container.get("env", [])
        if (variable.get("valueFrom") or {}).get("secretKeyRef")
    }
    return [f"{name} does not come from a Secret" for name in sorted(needed - from_secrets)]


def dockerfile_problems(text: str) -> list[str]:
    instructions = dockerfile_instructions(text)
    known = {
        "FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "USER", "WORKDIR", "CMD", "ENTRYPOINT",
        "LABEL", "EXPOSE", "VOLUME", "SHELL", "HEALTHCHECK", "STOPSIGNAL", "ONBUILD",
    }  # fmt: skip
    problems = [f"unknown instruction {k} {r[:40]}" for k, r in instructions if k not in known]
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    if not froms:
        problems.append("no FROM")
    elif not froms[0].startswith("python:3.11-slim"):
        problems.append(f"FROM {froms[0]}: expected python:3.11-slim")
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    user = users[-1].split(":")[0] if users else "root"
    if user in ("root", "0") or not user.isdigit():
        problems.append(f"runs as {user!r}: needs a numeric non-root USER (for runAsNonRoot)")
    for keyword, rest in instructions:
        if keyword == "ENV":
            names = [token.split("=")[0] for token in shlex.split(rest)]
        elif keyword == "ARG":
            names = [rest.split("=")[0]]
        else:
            continue
        for name in names:
            if KEY_NAME.search(name):
                problems.append(f"{keyword} {name}: secrets must not be baked in")
    return problems


def dockerfile_extras(text: str) -> set[str]:
    """The extras of every `pip install ...[EXTRAS]`, build ARG defaults substituted."""
    instructions = dockerfile_instructions(text)
    args = dockerfile_args(instructions)
    extras = set()
    for keyword, rest in instructions:
        if keyword == "RUN" and "pip install" in rest:
            for group in re.findall(r"embedfleet\[([^\]]+)\]", rest):
                group = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), group)
                extras |= {extra.strip() for extra in group.split(",") if extra.strip()}
    return extras


def pyproject_extras() -> set[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return set(pyproject["project"]["optional-dependencies"])


def images() -> list[tuple[str, str, float]]:
    """(where, image, GPUs) of every container and launcher node type."""
    found = []
    for where, doc in documents():
        if "kind" in doc:
            for path, pod in pod_specs(doc):
                for container in containers(pod):
                    found.append(
                        (f"{where}{path}", container.get("image", ""), container_gpus(container))
                    )
        elif "available_node_types" in doc:
            default = doc.get("docker", {}).get("worker_image") or doc["docker"]["image"]
            head = doc["docker"].get("head_image") or doc["docker"]["image"]
            for name, node in doc["available_node_types"].items():
                image = head if name == doc["head_node_type"] else default
                image = node.get("docker", {}).get("worker_image", image)
                found.append((f"{where} {name}", image, node["resources"].get("GPU", 0)))
    return found
