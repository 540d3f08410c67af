"""cluster/: deployment files that cannot run here, checked for what would break them there.

- Every YAML file parses. The Ray cluster launcher files pass Ray's own config preparation and
  schema, as `ray up` applies them, and offer a CPU and a GPU worker type.
- KubeRay objects have their required fields and no unknown ones (field names from KubeRay's
  ray.io/v1 Go types); Kubernetes objects and every pod template are checked against the
  kubernetes client's models. The CronJob has a valid 5-field schedule and forbids overlaps.
- Every `embedfleet` command the files run (launcher commands, container commands, RayJob
  entrypoints, commands submitted with `ray job submit` / `ray exec`, the image's CMD, the
  README's examples) parses with the real CLI parser, and a job command names a spec that
  exists where it runs (a ConfigMap mounted in that pod, or a launcher file mount) and loads.
  Every `ray` command parses with Ray's own CLI.
- API keys come from Secrets (or the launcher's env file) only: no literal key anywhere, no
  key-like env var with a literal value, every Ray pod gets the variables its specs name.
- The Dockerfile starts from python:3.11-slim, installs extras that exist, pins the Ray of the
  cluster files, bakes no secret in and runs as a numeric non-root user.

Each check returns a list of problems; the last tests feed broken documents to the same checks.
"""

from __future__ import annotations

import json
import re
import shlex
from urllib.parse import urlparse

import pytest

from embedfleet import embedding_functions
from embedfleet.job import JobSpec
from tests.cluster_files import (
    CLUSTER,
    CLUSTER_README,
    DOCKERFILE,
    LITERAL_KEYS,
    REPO,
    YAML_FILES,
    Run,
    all_runs,
    configmap_files,
    container_gpus,
    cron_field_problems,
    cronjob_problems,
    dockerfile_args,
    dockerfile_extras,
    dockerfile_instructions,
    dockerfile_problems,
    documents,
    embedfleet_problems,
    env_problems,
    images,
    job_spec_problems,
    key_variables_named_by_specs,
    kubernetes_object_problems,
    launcher_configs,
    object_id,
    objects,
    pyproject_extras,
    ray_command,
    ray_containers,
    raycluster_head,
    raycluster_spec_problems,
    rayjob_spec_problems,
    run_id,
    secret_supply_problems,
    yaml,
)


# -------------------------------------------------------------------------------- files
def test_cluster_has_every_deployment_file():
    kinds = {doc.get("kind") for _, doc in documents()}
    providers = {config["provider"]["type"] for _, config in launcher_configs()}
    assert {"RayCluster", "RayJob", "CronJob", "ConfigMap"} <= kinds
    assert {"aws", "gcp"} <= providers
    assert DOCKERFILE.is_file()
    assert CLUSTER_README.is_file()


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_every_yaml_file_parses(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert [doc for doc in docs if doc is not None], f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in docs if doc is not None)


def test_cluster_readme_explains_every_file():
    readme = CLUSTER_README.read_text()
    for path in sorted(CLUSTER.rglob("*")):
        if path.is_file() and path != CLUSTER_README and "__pycache__" not in path.parts:
            assert str(path.relative_to(CLUSTER)) in readme, f"README does not mention {path}"


# ----------------------------------------------------------------------- Ray cluster launcher
@pytest.mark.parametrize("item", launcher_configs(), ids=object_id)
def test_launcher_config_passes_rays_own_validation(item):
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    _, config = item
    validate_config(prepare_config(json.loads(json.dumps(config))))  # as `ray up` does


@pytest.mark.parametrize("item", launcher_configs(), ids=object_id)
def test_launcher_offers_a_cpu_and_a_gpu_worker_type(item):
    _, config = item
    workers = {
        name: node
        for name, node in config["available_node_types"].items()
        if name != config["head_node_type"] and node.get("max_workers", 1) > 0
    }
    gpu = {name for name, node in workers.items() if node["resources"].get("GPU", 0) >= 1}
    cpu = {name for name, node in workers.items() if node["resources"].get("CPU", 0) >= 1}
    assert gpu, "no worker type with resources {GPU: >= 1}"
    assert cpu - gpu, "no CPU-only worker type"


@pytest.mark.parametrize("item", launcher_configs(), ids=object_id)
def test_launcher_gpu_types_are_gpu_machines(item):
    _, config = item
    for name, node in config["available_node_types"].items():
        if not node["resources"].get("GPU"):
            continue
        node_config = node["node_config"]
        if config["provider"]["type"] == "aws":
            assert re.match(r"(g|p)\d", node_config["InstanceType"]), name
        if config["provider"]["type"] == "gcp":
            accelerated = node_config.get("guestAccelerators") or re.match(
                r"(a2|a3|g2)-", node_config["machineType"]
            )
            assert accelerated, f"{name}: no GPU on {node_config['machineType']}"
            scheduling = {k: v for item in node_config["scheduling"] for k, v in item.items()}
            assert scheduling.get("onHostMaintenance") == "TERMINATE", name


@pytest.mark.parametrize("item", launcher_configs(), ids=object_id)
def test_launcher_file_mounts_exist_where_ray_up_runs(item):
    _, config = item
    for remote, local in config["file_mounts"].items():
        assert (REPO / local).exists(), f"file_mounts {remote}: {local} (from the repo root)"


@pytest.mark.parametrize("item", launcher_configs(), ids=object_id)
def test_launcher_containers_read_keys_from_an_env_file_written_at_boot(item):
    _, config = item
    options = " ".join(config["docker"].get("run_options", []))
    match = re.search(r"--env-file[ =](\S+)", options)
    assert match, "docker run_options pass no --env-file"
    scopes = [config.get("initialization_commands") or []]
    for node in config["available_node_types"].values():
        if "initialization_commands" in node:  # replaces the global list for that type
            scopes.append(node["initialization_commands"])
    for scope in scopes:
        assert any(f"> {match.group(1)}" in command for command in scope), scope


# ------------------------------------------------------------------------------- KubeRay
@pytest.mark.parametrize("item", objects("RayCluster"), ids=object_id)
def test_raycluster_has_its_required_fields_and_no_unknown_ones(item):
    pytest.importorskip("kubernetes")
    _, doc = item
    assert doc["apiVersion"] == "ray.io/v1"
    assert raycluster_spec_problems(doc["spec"]) == []


@pytest.mark.parametrize("item", objects("RayCluster"), ids=object_id)
def test_raycluster_has_a_cpu_and_a_gpu_worker_group(item):
    _, doc = item
    groups = doc["spec"]["workerGroupSpecs"]
    gpus = [sum(map(container_gpus, g["template"]["spec"]["containers"])) for g in groups]
    assert any(count >= 1 for count in gpus), "no worker group with nvidia.com/gpu limits"
    assert any(count == 0 for count in gpus), "no CPU-only worker group"


@pytest.mark.parametrize("item", objects("RayJob"), ids=object_id)
def test_rayjob_has_its_required_fields_and_no_unknown_ones(item):
    pytest.importorskip("kubernetes")
    _, doc = item
    assert doc["apiVersion"] == "ray.io/v1"
    assert rayjob_spec_problems(doc["spec"]) == []


def test_ray_versions_agree_with_the_image_and_the_installed_ray():
    ray = pytest.importorskip("ray")
    pinned = dockerfile_args(dockerfile_instructions(DOCKERFILE.read_text()))["RAY_VERSION"]
    versions = {
        object_id((where, doc)): spec["rayVersion"]
        for where, doc in documents()
        if doc.get("kind") in ("RayCluster", "RayJob")
        for spec in [doc["spec"].get("rayClusterSpec", doc["spec"])]
    }
    assert versions
    assert set(versions.values()) == {pinned}, versions
    assert pinned == ray.__version__


def test_gpu_containers_run_the_cuda_image_and_the_others_the_cpu_one():
    found = images()
    assert len({image.rpartition(":")[0] for _, image, _ in found}) == 1, found
    for where, image, gpus in found:
        assert image.endswith("-cuda" if gpus else "-cpu"), f"{where}: {image}"


# -------------------------------------------------------------------------- Kubernetes
@pytest.mark.parametrize(
    "item", objects("CronJob") + objects("ConfigMap") + objects("Secret"), ids=object_id
)
def test_kubernetes_objects_match_the_api_schema(item):
    pytest.importorskip("kubernetes")
    _, doc = item
    type_name = {"CronJob": "V1CronJob", "ConfigMap": "V1ConfigMap", "Secret": "V1Secret"}
    assert kubernetes_object_problems(doc, type_name[doc["kind"]]) == []


@pytest.mark.parametrize("item", objects("CronJob"), ids=object_id)
def test_cronjob_runs_nightly_and_never_overlaps(item):
    _, doc = item
    assert doc["apiVersion"] == "batch/v1"
    assert cronjob_problems(doc) == []


def test_ray_job_submit_targets_a_raycluster_defined_here():
    submits = [run for run in all_runs("ray") if run.args[:2] == ("job", "submit")]
    for run in submits:
        if run.where == "cluster/README.md":
            continue  # port-forwarded addresses
        address = ray_command(list(run.args)).params["address"]
        assert raycluster_head(address or "") is not None, f"{run.where}: {address}"


# ------------------------------------------------------------------------------- commands
def test_the_nightly_cronjob_runs_jobs_nightly_toml_with_a_destination(tmp_path):
    [(_, cronjob)] = objects("CronJob")
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert "/jobs/nightly.toml" in container["command"]
    mounted = configmap_files()["embedfleet-jobs"]["nightly.toml"]
    assert mounted == (REPO / "jobs" / "nightly.toml").read_text()  # the same file
    (tmp_path / "nightly.toml").write_text(mounted)
    spec = JobSpec.from_toml(tmp_path / "nightly.toml")
    assert spec.output.mode == "incremental" and spec.output.keep_text
    assert [destination.kind for destination in spec.destination] == ["chroma"]


def test_the_files_run_embedfleet_job_commands():
    commands = {run.args[0] for run in all_runs("embedfleet") if run.args}
    assert "run" in commands
    assert any("--incremental" in run.args for run in all_runs("embedfleet"))


@pytest.mark.parametrize("run", all_runs("embedfleet"), ids=run_id)
def test_embedfleet_commands_parse_with_the_real_cli(run):
    assert embedfleet_problems(run.args) == []


@pytest.mark.parametrize("run", all_runs("embedfleet"), ids=run_id)
def test_embedfleet_job_commands_name_a_spec_that_exists_where_they_run(run, tmp_path):
    if embedfleet_problems(run.args):
        pytest.skip("does not parse (test_embedfleet_commands_parse_with_the_real_cli)")
    assert job_spec_problems(run, tmp_path) == []


@pytest.mark.parametrize("run", all_runs("ray"), ids=run_id)
def test_ray_commands_parse_with_rays_own_cli(run):
    pytest.importorskip("ray")
    ray_command(list(run.args))


# --------------------------------------------------------------------------------- job specs
@pytest.mark.parametrize(
    "name", [f"{cm}/{key}" for cm, data in configmap_files().items() for key in data]
)
def test_configmap_job_specs_load_and_write_to_shared_storage(name, tmp_path):
    configmap, _, key = name.partition("/")
    text = configmap_files()[configmap][key]
    (tmp_path / key).write_text(text)
    spec = JobSpec.from_toml(tmp_path / key)
    assert spec.embedding.provider in embedding_functions.names()
    for uri in (spec.source.uri, spec.output.uri):
        assert urlparse(uri).scheme in ("s3", "gs", "gcs", "az", "abfs"), (
            f"{uri}: shards are written by tasks on any pod; use object storage"
        )
    assert "api_key" not in spec.embedding.config, "keys are named (api_key_env_var), never set"


# ---------------------------------------------------------------------------------- keys
@pytest.mark.parametrize(
    "path",
    sorted(p for p in CLUSTER.rglob("*") if p.is_file()),
    ids=lambda p: str(p.relative_to(CLUSTER)),
)
def test_no_file_holds_a_literal_key(path):
    text = path.read_text(errors="replace")
    found = {
        kind: m.group(0) for kind, pattern in LITERAL_KEYS.items() if (m := pattern.search(text))
    }
    assert found == {}


@pytest.mark.parametrize("item", [(w, d) for w, d in documents() if "kind" in d], ids=object_id)
def test_key_like_variables_come_from_secrets(item):
    _, doc = item
    assert env_problems(doc) == []


@pytest.mark.parametrize("item", objects("RayCluster") + objects("RayJob"), ids=object_id)
def test_every_ray_pod_gets_the_keys_its_job_specs_name_from_a_secret(item):
    _, doc = item
    needed = key_variables_named_by_specs()
    assert needed, "no spec names an api_key_env_var: nothing shows how keys flow"
    for group, container in ray_containers(doc):
        assert secret_supply_problems(container, needed) == [], group


# ------------------------------------------------------------------------------- Dockerfile
def test_dockerfile_is_non_root_and_bakes_in_no_secret():
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_dockerfile_installs_extras_that_exist():
    extras = dockerfile_extras(DOCKERFILE.read_text())
    assert {"ray", "local", "api", "s3"} <= extras
    assert extras <= pyproject_extras()


def test_dockerfile_build_context_admits_only_what_it_copies():
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") if "*" in ignore else 0] == "*", "not an allow-list"
    admitted = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "COPY" and "--from" not in rest:
            *sources, _ = shlex.split(rest)
            assert set(sources) <= admitted, sources
            assert all((REPO / source).exists() for source in sources)


def test_dockerfile_installs_what_kuberay_and_the_launcher_run_in_the_container():
    text = DOCKERFILE.read_text()
    for tool in ("wget", "rsync", "openssh-client"):  # probes; launcher file sync and ssh
        assert re.search(rf"apt-get install[^\n]*\b{tool}\b", text), tool


# ------------------------------------------------------------------- the checks can fail
@pytest.mark.parametrize(
    "args",
    [
        ("run", "x.toml", "--no-such-flag"),
        ("runn", "x.toml"),
        ("run",),
        ("run", "x", "--mode", "y"),
    ],
)
def test_embedfleet_check_rejects_what_the_cli_rejects(args):
    assert embedfleet_problems(args) != []


def test_ray_check_rejects_an_unknown_flag():
    import click

    pytest.importorskip("ray")
    with pytest.raises(click.UsageError):
        ray_command(["start", "--head", "--no-such-flag"])


@pytest.mark.parametrize(
    "schedule", ["0 2 * *", "61 2 * * *", "0 2 * * 8", "@daily", "*/0 * * * *"]
)
def test_cron_check_rejects_invalid_schedules(schedule):
    assert cron_field_problems(schedule) != []


@pytest.mark.parametrize("schedule", ["0 2 * * *", "*/15 0-6 1,15 JAN-jun mon-fri", "0 0 * * 7"])
def test_cron_check_accepts_valid_schedules(schedule):
    assert cron_field_problems(schedule) == []


def test_cronjob_check_rejects_overlapping_and_fire_and_forget_runs():
    _, doc = objects("CronJob")[0]
    broken = json.loads(json.dumps(doc))
    broken["spec"]["concurrencyPolicy"] = "Allow"
    container = broken["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    container["command"] = ["ray", "job", "submit", "--no-wait", "--", "embedfleet", "run", "x"]
    assert len(cronjob_problems(broken)) == 2


def test_schema_checks_reject_unknown_and_missing_fields():
    pytest.importorskip("kubernetes")
    _, doc = objects("RayCluster")[0]
    broken = json.loads(json.dumps(doc["spec"]))
    broken["workerGroupSpecs"][0]["maxReplica"] = 3
    broken["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    del broken["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]
    problems = " ".join(raycluster_spec_problems(broken))
    assert "maxReplica: unknown field" in problems
    assert "num-cpus: must be a string" in problems
    assert "`name`, must not be `None`" in problems
    assert rayjob_spec_problems({"rayClusterSpec": doc["spec"], "clusterSelector": {}}) != []


def test_key_checks_reject_literal_keys():
    pod = {"containers": [{"name": "c", "env": [{"name": "OPENAI_API_KEY", "value": "x"}]}]}
    assert env_problems({"spec": pod}) != []
    assert secret_supply_problems({"env": []}, {"OPENAI_API_KEY"}) != []
    fake = "sk-" + "a1B2" * 8
    assert LITERAL_KEYS["OpenAI-style key"].search(f"OPENAI_API_KEY={fake}")


def test_job_spec_check_rejects_a_spec_the_pod_cannot_see(tmp_path):
    run = Run("x", "embedfleet", ("run", "/jobs/missing.toml"), {"/jobs": {}}, None)
    assert job_spec_problems(run, tmp_path) != []
    too_big = (
        "[source]\nuri='s3://b/x'\n[output]\nuri='s3://b/y'\n[fleet]\nreplicas=9\nnum_gpus=1\n"
    )
    run = Run("x", "embedfleet", ("run", "/jobs/a.toml"), {"/jobs": {"a.toml": too_big}}, 4)
    assert job_spec_problems(run, tmp_path) != []


def test_dockerfile_check_rejects_root_and_baked_in_keys():
    problems = dockerfile_problems(
        "FROM python:3.11-slim\nENV OPENAI_API_KEY=x\nARG HF_TOKEN\nUSER root\n"
    )
    assert len(problems) == 3
