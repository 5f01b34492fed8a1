"""deploy/kubernetes validates against the Kubernetes schemas, and it, the Dockerfile,
docker-compose.yml and docs/cluster.md agree with each other and with hpsearch's command line
and settings. No cluster runs here: the manifests are read and validated offline with
kubernetes-validate, in strict mode (an unknown or misspelled field fails)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml
from sqlalchemy.engine import make_url

from hpsearch.cli import app
from hpsearch.search.study_file import packaged_studies
from hpsearch.settings import ENVIRONMENT
from hpsearch.storage.urls import PASSWORD_ENV
from tests import servers

REPO = Path(__file__).parent.parent
KUBE = REPO / "deploy" / "kubernetes"
BASE, GPU, PGBOUNCER = KUBE / "base", KUBE / "gpu", KUBE / "pgbouncer"
DOCS = (REPO / "docs" / "cluster.md").read_text()
DOCKERFILE = (REPO / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())

# The oldest Kubernetes the manifests are written for (podFailurePolicy and the
# DisruptionTarget condition are GA in 1.31; backoffLimitPerIndex is beta and on by default
# since 1.29, GA in 1.33), and the newest whose schemas the installed kubernetes-validate has.
VERSIONS = ("1.31", kubernetes_validate.latest_version())
# Variables that only fill the launchers' command lines (compose's .env, the ConfigMap); hpsearch
# itself does not read them.
LAUNCHER_VARIABLES = {"HPSEARCH_STUDY", "HPSEARCH_TRIALS"}
HPSEARCH_VARIABLES = set(ENVIRONMENT.values()) | {PASSWORD_ENV}
DB_SECRET, S3_SECRET = "hpsearch-db", "hpsearch-s3"


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def base_objects() -> list[dict[str, Any]]:
    """Every object of the base kustomization, in its resources' order."""
    return [doc for name in kustomization(BASE)["resources"] for doc in load(BASE / name)]


def gpu_patches() -> list[dict[str, Any]]:
    return [doc for patch in kustomization(GPU)["patches"] for doc in load(GPU / patch["path"])]


def merge(base: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge, as far as these patches use it: maps merge, lists of named
    items (containers, env) merge by name, other lists and scalars are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and named_items(base + patch):
        by_name = {item["name"]: item for item in base}
        patched = [merge(by_name.get(item["name"], {}), item) for item in patch]
        names = {item["name"] for item in patch}
        return [item for item in base if item["name"] not in names] + patched
    return copy.deepcopy(patch)


def named_items(items: list[Any]) -> bool:
    return all(isinstance(item, dict) and "name" in item for item in items)


def gpu_objects() -> list[dict[str, Any]]:
    """The GPU kustomization's objects: the base with the GPU patches merged in."""
    patches = {(p["kind"], p["metadata"]["name"]): p for p in gpu_patches()}
    objects = base_objects()
    return [merge(o, patches.get((o["kind"], o["metadata"]["name"]), {})) for o in objects]


def pgbouncer_objects() -> list[dict[str, Any]]:
    """The PgBouncer kustomization's objects: the base with its settings patch merged in,
    then PgBouncer's own."""
    kustom = kustomization(PGBOUNCER)
    patches = {
        (p["kind"], p["metadata"]["name"]): p
        for patch in kustom["patches"]
        for p in load(PGBOUNCER / patch["path"])
    }
    objects = [
        merge(o, patches.get((o["kind"], o["metadata"]["name"]), {})) for o in base_objects()
    ]
    return objects + [doc for name in kustom["resources"][1:] for doc in load(PGBOUNCER / name)]


VARIANTS = {"base": base_objects(), "gpu": gpu_objects(), "pgbouncer": pgbouncer_objects()}
OBJECTS = VARIANTS["base"]


def find(kind: str, name: str, objects: list[dict[str, Any]] = OBJECTS) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_specs(objects: list[dict[str, Any]] = OBJECTS) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in ("Job", "Deployment", "StatefulSet"):
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]


def containers(objects: list[dict[str, Any]] = OBJECTS) -> Iterator[dict[str, Any]]:
    for _, spec in pod_specs(objects):
        yield from spec.get("initContainers", []) + spec["containers"]


def hpsearch_containers(objects: list[dict[str, Any]] = OBJECTS) -> list[dict[str, Any]]:
    return [c for c in containers(objects) if c["image"] == COMPOSE["services"]["worker"]["image"]]


def env_value(container: dict[str, Any], name: str) -> str:
    """A variable's literal value in the container: its own env, else the ConfigMaps it loads."""
    for item in container.get("env", []):
        if item["name"] == name:
            return item["value"]
    for source in container.get("envFrom", []):
        data = find("ConfigMap", source["configMapRef"]["name"])["data"]
        if name in data:
            return data[name]
    raise KeyError(name)


def secret_refs(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Environment name -> secretKeyRef, for the container's variables taken from Secrets."""
    return {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }


def option(args: list[str], flag: str) -> str:
    return str(args[args.index(flag) + 1])


def cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# -- the manifests themselves ---------------------------------------------------------------


def test_kustomizations_list_every_manifest() -> None:
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization(BASE)["resources"]) == sorted(files)
    assert kustomization(GPU)["resources"] == ["../base"]
    patched = {p.name for p in GPU.glob("*.yaml")} - {"kustomization.yaml"}
    assert {patch["path"] for patch in kustomization(GPU)["patches"]} == patched
    for patch in gpu_patches():  # a patch of something that is not there would add it
        target = find(patch["kind"], patch["metadata"]["name"])["spec"]["template"]["spec"]
        names = {c["name"] for c in target["containers"]}
        assert {c["name"] for c in patch["spec"]["template"]["spec"]["containers"]} <= names


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly(version: str) -> None:
    gpu_only = [obj for obj in VARIANTS["gpu"] if obj not in VARIANTS["base"]]
    assert [obj["metadata"]["name"] for obj in gpu_only] == ["hpsearch-workers"]
    pgbouncer_only = [obj for obj in VARIANTS["pgbouncer"] if obj not in VARIANTS["base"]]
    assert sorted(obj["metadata"]["name"] for obj in pgbouncer_only) == [
        "hpsearch-pgbouncer", "hpsearch-settings", "pgbouncer", "pgbouncer"
    ]  # fmt: skip
    for obj in VARIANTS["base"] + gpu_only + pgbouncer_only:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_gpu_patches_validate_strictly(version: str) -> None:
    for patch in gpu_patches():  # a misspelled field in a patch would be added silently
        kubernetes_validate.validate(patch, version, strict=True)


def test_validation_can_fail() -> None:
    workers = copy.deepcopy(find("Job", "hpsearch-workers"))
    workers["spec"]["parallelsim"] = 2
    with pytest.raises(kubernetes_validate.ValidationError, match="parallelsim"):
        kubernetes_validate.validate(workers, VERSIONS[-1], strict=True)
    # backoffLimitPerIndex is newer than Kubernetes 1.27.
    workers = copy.deepcopy(find("Job", "hpsearch-workers"))
    del workers["spec"]["podFailurePolicy"]  # 1.27 also wants onPodConditions in every rule
    with pytest.raises(kubernetes_validate.ValidationError, match="backoffLimitPerIndex"):
        kubernetes_validate.validate(workers, "1.27", strict=True)


def canonical(value: Any) -> Any:
    """``value`` with lists of named items (containers, env) in name order: kustomize may
    reorder them when it merges a patch, and Kubernetes does not care."""
    if isinstance(value, dict):
        return {key: canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        items = [canonical(item) for item in value]
        if named_items(items):
            items.sort(key=lambda item: item["name"])
        return items
    return value


def test_kustomize_renders_what_the_tests_read() -> None:
    """kubectl's kustomize renders every variant into the objects validated above (the GPU
    and PgBouncer patches merged as ``merge`` does). Needs kubectl; the rest of this file
    does not."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the other tests read the files directly)")
    image = kustomization(BASE)["images"][0]
    for variant, folder in (("base", BASE), ("gpu", GPU), ("pgbouncer", PGBOUNCER)):
        result = subprocess.run(
            [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        rendered = list(yaml.safe_load_all(result.stdout))

        def key(obj: dict[str, Any]) -> tuple[str, str]:
            return obj["kind"], obj["metadata"]["name"]

        expected = copy.deepcopy(sorted(VARIANTS[variant], key=key))
        for container in containers(expected):  # the overlay's own images: entries
            for entry in kustomization(folder).get("images", []) if folder != BASE else []:
                if container["image"] == entry["name"]:
                    container["image"] = f"{entry['newName']}:{entry['newTag']}"
        assert canonical(sorted(rendered, key=key)) == canonical(expected), variant
        for container in containers(rendered):  # the images: entry finds every hpsearch pod
            if container["image"].split(":")[0] == image["name"]:
                assert container["image"] == f"{image['newName']}:{image['newTag']}"


# -- the manifests agree with hpsearch, the Dockerfile and docker-compose ---------------------


def test_one_image_name_everywhere() -> None:
    image = COMPOSE["services"]["worker"]["image"]
    assert COMPOSE["services"]["dashboard"]["image"] == image
    name, tag = image.split(":")
    assert kustomization(BASE)["images"] == [{"name": name, "newName": name, "newTag": tag}]
    hpsearch_pods = {name for name, spec in pod_specs() if spec["containers"][0]["image"] == image}
    assert hpsearch_pods == {
        "hpsearch-create",
        "hpsearch-workers",
        "hpsearch-dashboard",
        "hpsearch-finalize",
    }
    others = {c["image"] for c in containers()} - {image}
    assert others == {COMPOSE["services"]["postgres"]["image"]}  # postgres:16 in both


def command_lines() -> list[tuple[str, list[str]]]:
    """Every hpsearch command line of the manifests (both variants) and docker-compose.yml."""
    lines = [
        (f"{variant}/{c['name']}", [str(a) for a in c["args"]])
        for variant, objects in VARIANTS.items()
        for c in hpsearch_containers(objects)
    ]
    for service in ("worker", "dashboard"):
        lines.append(
            (f"compose/{service}", [str(a) for a in COMPOSE["services"][service]["command"]])
        )
    return lines


def cli_commands() -> dict[str, Any]:
    """``hpsearch``'s commands by name, as ``hpsearch --help`` lists them."""
    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def cli_options(command: Any) -> set[str]:
    return {
        opt
        for param in command.params
        if param.param_type_name == "option"
        for opt in param.opts + param.secondary_opts
    }


def test_commands_and_options_exist_in_the_cli() -> None:
    commands = cli_commands()
    for where, args in command_lines():
        command = commands.get(args[0])
        assert command is not None, f"{where}: no command {args[0]!r} in {sorted(commands)}"
        options = cli_options(command)
        for arg in args[1:]:
            if arg.startswith("--"):
                assert arg in options, f"{where}: hpsearch {args[0]} has no option {arg}"
    used = {args[0] for _, args in command_lines()}
    assert used == {"create", "run", "dashboard", "finalize"}


def docs_commands() -> list[str]:
    """The command lines of docs/cluster.md's code blocks, continuation lines joined."""
    blocks = re.findall(r"^```\w*\n(.*?)^```", DOCS, re.M | re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [re.sub(r"(^|\s)#.*", "", line) for line in lines]


def test_docs_commands_exist() -> None:
    commands = cli_commands()
    used = {m for line in docs_commands() for m in re.findall(r"\bhpsearch (\w[\w-]*)", line)}
    assert used and used <= set(commands), used - set(commands)
    # Objects the page names (job/x, service/x, ...) are the manifests'.
    kinds = {"job": "Job", "service": "Service", "deployment": "Deployment"}
    kinds |= {"statefulset": "StatefulSet", "configmap": "ConfigMap"}
    every = [obj for objects in VARIANTS.values() for obj in objects]
    for kind, name in re.findall(
        r"\b(job|service|deployment|statefulset|configmap)/([\w-]+)", DOCS
    ):
        assert [o for o in every if o["kind"] == kinds[kind] and o["metadata"]["name"] == name]
    for name in re.findall(r"kubectl patch job ([\w-]+)", DOCS):
        assert find("Job", name)["spec"]["suspend"] is True


def hpsearch_names(text: str) -> set[str]:
    return set(re.findall(r"\bHPSEARCH_[A-Z_]+", text))


def test_every_hpsearch_variable_is_one_hpsearch_reads() -> None:
    used: dict[str, set[str]] = {
        "settings.yaml": set(find("ConfigMap", "hpsearch-settings")["data"]),
        "docker-compose.yml": hpsearch_names((REPO / "docker-compose.yml").read_text()),
        ".env.example": hpsearch_names((REPO / ".env.example").read_text()),
        "Dockerfile": hpsearch_names(DOCKERFILE),
        "docs/cluster.md": hpsearch_names(DOCS),
    }
    for variant, objects in VARIANTS.items():
        used[variant] = {item["name"] for c in containers(objects) for item in c.get("env", [])}
    allowed = HPSEARCH_VARIABLES | LAUNCHER_VARIABLES
    for where, names in used.items():
        unknown = {n for n in names if n.startswith("HPSEARCH_")} - allowed
        assert not unknown, f"{where} sets {sorted(unknown)}, which hpsearch does not read"
    assert "HPSEARCH_ARTIFACTS" in HPSEARCH_VARIABLES  # the artifact store is a setting
    assert "HPSEARCH_CHECKPOINT_DIR" not in set().union(*used.values())  # replaced by it


def test_command_variables_are_defined() -> None:
    """Kubernetes leaves an undefined $(VAR) in args as it is: every one must be defined."""
    for variant, objects in VARIANTS.items():
        for container in hpsearch_containers(objects):
            for arg in container["args"]:
                for name in re.findall(r"\$\((\w+)\)", str(arg)):
                    assert env_value(container, name), f"{variant}/{container['name']}: {name}"


def test_study_and_trials_agree() -> None:
    env = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    settings = find("ConfigMap", "hpsearch-settings")["data"]
    compose_run = [str(a) for a in COMPOSE["services"]["worker"]["command"]]
    assert compose_run[:4] == [
        "run",
        "${HPSEARCH_STUDY:-usps}",
        "--trials",
        "${HPSEARCH_TRIALS:-200}",
    ]
    for name, default in (("HPSEARCH_STUDY", "usps"), ("HPSEARCH_TRIALS", "200")):
        assert settings[name] == env[name] == default
    assert settings["HPSEARCH_STUDY"] in packaged_studies()
    assert int(settings["HPSEARCH_TRIALS"]) >= 1
    for variant, objects in VARIANTS.items():
        args = {c["name"]: c["args"] for c in hpsearch_containers(objects)}
        assert args["worker"][:4] == ["run", "$(HPSEARCH_STUDY)", "--trials", "$(HPSEARCH_TRIALS)"]
        assert args["create"] == ["create", "$(HPSEARCH_STUDY)"], variant
        assert args["finalize"][:2] == ["finalize", "$(HPSEARCH_STUDY)"], variant


def test_dashboard_port_agrees() -> None:
    compose = COMPOSE["services"]["dashboard"]
    port = int(option(compose["command"], "--port"))
    assert str(compose["ports"][0]).split(":")[-1] == str(port)
    assert re.search(rf"^EXPOSE {port}$", DOCKERFILE, re.M)
    (container,) = find("Deployment", "hpsearch-dashboard")["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["args"][0] == "dashboard" and option(container["args"], "--host") == "0.0.0.0"
    assert int(option(container["args"], "--port")) == port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = find("Service", "hpsearch-dashboard")["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP"
    (service_port,) = service["ports"]
    assert ports[service_port["targetPort"]] == service_port["port"] == port
    assert container["readinessProbe"]["tcpSocket"]["port"] in ports
    assert f"service/hpsearch-dashboard {port}:{port}" in DOCS


def test_services_select_their_pods() -> None:
    for service in (o for o in OBJECTS if o["kind"] == "Service"):
        selector = service["spec"]["selector"]
        matched = [
            obj
            for obj in OBJECTS
            if obj["kind"] in ("Deployment", "StatefulSet")
            and selector.items() <= obj["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, service["metadata"]["name"]
        (target,) = matched
        assert selector == target["spec"]["selector"]["matchLabels"]
        ports = {
            p["name"] for c in target["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_storage_url_points_at_the_postgres_service() -> None:
    url = make_url(find("ConfigMap", "hpsearch-settings")["data"]["HPSEARCH_STORAGE"])
    compose_url = COMPOSE["services"]["worker"]["environment"]["HPSEARCH_STORAGE"]
    assert url.drivername == compose_url.split(":", 1)[0] == "postgresql+psycopg"
    assert url.password is None  # the password comes from HPSEARCH_DB_PASSWORD
    service = find("Service", str(url.host))
    assert url.port == service["spec"]["ports"][0]["port"]
    statefulset = find("StatefulSet", "postgres")
    assert statefulset["spec"]["serviceName"] == url.host
    (postgres,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert url.username == env_value(postgres, "POSTGRES_USER")
    assert url.database == env_value(postgres, "POSTGRES_DB")
    assert postgres["readinessProbe"]["exec"]["command"] == [
        "pg_isready", "-U", url.username, "-d", url.database
    ]  # fmt: skip
    mounts = {m["name"]: m["mountPath"] for m in postgres["volumeMounts"]}
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert env_value(postgres, "PGDATA").startswith(mounts[claim["metadata"]["name"]] + "/")


def test_secrets_are_referenced_never_written() -> None:
    assert not [o for o in OBJECTS if o["kind"] == "Secret"]
    for path in KUBE.rglob("*.yaml"):
        text = path.read_text()
        assert not re.search(r"(?i)password:\s*\S", text), path
    created = {  # kubectl create secret generic NAME --from-literal=KEY=...
        (match.group(1), key)
        for line in docs_commands()
        if (match := re.search(r"kubectl create secret generic ([\w-]+)", line))
        for key in re.findall(r"--from-literal=(\w+)=", line)
    }
    assert (DB_SECRET, "password") in created
    (postgres,) = find("StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"]
    assert secret_refs(postgres)["POSTGRES_PASSWORD"] == {"name": DB_SECRET, "key": "password"}
    for variant, objects in VARIANTS.items():
        for container in hpsearch_containers(objects):
            refs = secret_refs(container)
            assert refs[PASSWORD_ENV] == {"name": DB_SECRET, "key": "password"}, variant
            for env_name, ref in refs.items():
                assert (ref["name"], ref["key"]) in created, f"{env_name}: no such secret in docs"
                # The database password is required; S3 keys are optional (pod identities).
                assert ref.get("optional", False) == (ref["name"] == S3_SECRET), env_name


def test_artifacts_go_to_s3_from_every_pod_that_writes_or_shows_them() -> None:
    settings = find("ConfigMap", "hpsearch-settings")["data"]
    assert settings["HPSEARCH_ARTIFACTS"].startswith("s3://")
    assert {"AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"} <= set(settings)
    for variant, objects in VARIANTS.items():
        for container in hpsearch_containers(objects):
            if container["args"][0] in ("run", "dashboard", "finalize"):
                assert env_value(container, "HPSEARCH_ARTIFACTS") == settings["HPSEARCH_ARTIFACTS"]
                keys = {ref["key"] for ref in secret_refs(container).values()}
                assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keys, variant


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_workers_are_an_indexed_job_that_survives_disruptions(variant: str) -> None:
    spec = find("Job", "hpsearch-workers", VARIANTS[variant])["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 1
    assert spec["backoffLimitPerIndex"] >= 1
    assert 0 <= spec["maxFailedIndexes"] < spec["completions"]  # one live worker finishes it
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by podFailurePolicy
    rules = spec["podFailurePolicy"]["rules"]
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in rules
    (fail,) = [rule for rule in rules if rule["action"] == "FailJob"]
    assert fail["onExitCodes"] == {"containerName": "worker", "operator": "In", "values": [2]}
    assert [c["name"] for c in pod["containers"]] == ["worker"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_worker_processes_match_the_cpu_limit(variant: str) -> None:
    """Processes x threads = the CPU limit: a container sees its node's every core, so
    hpsearch's defaults would oversubscribe it."""
    (worker,) = find("Job", "hpsearch-workers", VARIANTS[variant])["spec"]["template"]["spec"][
        "containers"
    ]
    processes, threads = (
        int(env_value(worker, "HPSEARCH_WORKERS")),
        int(option(worker["args"], "--threads")),
    )
    resources = worker["resources"]
    assert (
        processes * threads
        == cpus(resources["limits"]["cpu"])
        == cpus(resources["requests"]["cpu"])
    )
    gpus = int(resources["limits"].get("nvidia.com/gpu", 0))
    assert env_value(worker, "HPSEARCH_DEVICE") == ("cuda" if variant == "gpu" else "cpu")
    assert gpus == (1 if variant == "gpu" else 0)


def test_finalize_threads_match_the_cpu_limit() -> None:
    (finalize,) = find("Job", "hpsearch-finalize")["spec"]["template"]["spec"]["containers"]
    limit = cpus(finalize["resources"]["limits"]["cpu"])
    assert int(env_value(finalize, "OMP_NUM_THREADS")) == limit  # PyTorch's thread count


def test_pods_run_as_the_images_non_root_user() -> None:
    uid, gid = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE, re.M).groups()  # type: ignore[union-attr]
    assert re.search(rf"useradd --uid {uid} .*\bhpsearch\b", DOCKERFILE)
    for variant, objects in VARIANTS.items():
        for name, pod in pod_specs(objects):
            context = pod["securityContext"]
            assert context["runAsNonRoot"] is True, name
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
            if name not in ("postgres", "pgbouncer"):  # their images' own users
                assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid)), name
        for container in containers(objects):
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            }, container["name"]
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), (variant, container["name"])
            assert "memory" in resources["limits"], (variant, container["name"])


# -- PgBouncer between the workers and PostgreSQL ----------------------------------------------


def test_pgbouncer_overlay_lists_its_files() -> None:
    kustom = kustomization(PGBOUNCER)
    files = {p.name for p in PGBOUNCER.glob("*.yaml")} - {"kustomization.yaml"}
    assert kustom["resources"][0] == "../base"
    assert set(kustom["resources"][1:]) | {p["path"] for p in kustom["patches"]} == files
    (image,) = kustom["images"]
    (pgbouncer,) = find("Deployment", "pgbouncer", VARIANTS["pgbouncer"])["spec"]["template"][
        "spec"
    ]["containers"]
    assert pgbouncer["image"] == image["name"]


def test_pgbouncer_sits_between_the_workers_and_postgres() -> None:
    objects = VARIANTS["pgbouncer"]
    url = make_url(find("ConfigMap", "hpsearch-settings", objects)["data"]["HPSEARCH_STORAGE"])
    service = find("Service", str(url.host), objects)
    assert url.port == service["spec"]["ports"][0]["port"]
    deployment = find("Deployment", "pgbouncer", objects)
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    (port,) = container["ports"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    ini = servers.shipped_pgbouncer_ini()
    assert int(ini["pgbouncer"]["listen_port"]) == port["containerPort"]
    assert container["command"][-1] in {m["mountPath"] for m in container["volumeMounts"]}
    # Its one database is the base's PostgreSQL, under the name the workers' URL uses.
    target = dict(part.split("=") for part in ini["databases"][str(url.database)].split())
    postgres = find("Service", "postgres")
    assert (target["host"], int(target["port"])) == (
        "postgres",
        postgres["spec"]["ports"][0]["port"],
    )
    (server,) = find("StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"]
    assert target["dbname"] == env_value(server, "POSTGRES_DB")
    # Transaction mode, a pool that leaves room in PostgreSQL's default max_connections (100),
    # and hpsearch's `options` ignored, its limits set in PgBouncer instead.
    settings = ini["pgbouncer"]
    assert settings["pool_mode"] == "transaction"
    assert int(settings["max_db_connections"]) <= 50
    assert "options" in settings["ignore_startup_parameters"].split(",")
    assert settings["tcp_keepalive"] == "1" and int(settings["idle_transaction_timeout"]) > 0
    # The auth file is the secret the docs create.
    (auth,) = [v for v in pod["spec"]["volumes"] if v["name"] == "auth"]
    secret = auth["secret"]["secretName"]
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["auth"]
    assert settings["auth_file"].startswith(mount + "/")
    created = [
        line for line in docs_commands() if f"kubectl create secret generic {secret}" in line
    ]
    (command,) = created
    assert f"--from-literal={Path(settings['auth_file']).name}=" in command
