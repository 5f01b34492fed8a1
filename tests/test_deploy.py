"""deploy/kubernetes, as `kubectl kustomize` renders each variant (what `kubectl apply -k`
sends), validates against the Kubernetes schemas, passes checkov, and agrees with hpsearch's
command line, settings and exit codes, with the Dockerfile, docker-compose.yml and
docs/cluster.md. No cluster runs here: the objects are validated offline with
kubernetes-validate, in strict mode (an unknown or misspelled field fails). The database
scripts the manifests ship run against a real PostgreSQL in tests/test_deploy_database.py."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml
from sqlalchemy.engine import make_url

from hpsearch.cli import app
from hpsearch.errors import DeviceMissing, HpsearchError, TrialsFailing, Unavailable
from hpsearch.results.dashboard import HEALTH_PATH
from hpsearch.search.study_file import packaged_studies
from hpsearch.settings import ENVIRONMENT
from hpsearch.storage.urls import PASSWORD_ENV, PASSWORD_FILE_ENV
from tests import servers

REPO = Path(__file__).parent.parent
KUBE = REPO / "deploy" / "kubernetes"
BASE, GPU, PGBOUNCER = KUBE / "base", KUBE / "gpu", KUBE / "pgbouncer"
DOCS = (REPO / "docs" / "cluster.md").read_text()
DOCKERFILE = (REPO / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

# The oldest Kubernetes the manifests are written for (podFailurePolicy, FailIndex and the
# DisruptionTarget condition are GA in 1.31 or earlier; backoffLimitPerIndex is beta and on by
# default since 1.29, GA in 1.33), and the newest whose schemas kubernetes-validate has.
VERSIONS = ("1.31", kubernetes_validate.latest_version())
# Variables that only fill the launchers' command lines (compose's .env, the ConfigMap);
# hpsearch itself does not read them.
LAUNCHER_VARIABLES = {"HPSEARCH_STUDY", "HPSEARCH_TRIALS"}
HPSEARCH_VARIABLES = set(ENVIRONMENT.values()) | {PASSWORD_ENV, PASSWORD_FILE_ENV}
DB_SECRET, S3_SECRET = "hpsearch-db", "hpsearch-s3"
NAMESPACE = "hpsearch"

KUBECTL = shutil.which("kubectl")
if KUBECTL is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("kubectl is not on PATH: it renders the kustomizations under test")
    pytest.skip("kubectl is not installed: it renders the kustomizations", allow_module_level=True)


def render(folder: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


VARIANTS = {"base": render(BASE), "gpu": render(GPU), "pgbouncer": render(PGBOUNCER)}
OBJECTS = VARIANTS["base"]
IMAGES = {entry["name"]: entry for entry in kustomization(BASE)["images"]}
HPSEARCH_IMAGE = f"{IMAGES['hpsearch']['newName']}:{IMAGES['hpsearch']['newTag']}"


def find(kind: str, name: str, objects: list[dict[str, Any]] = OBJECTS) -> dict[str, Any]:
    """The object ``name``; for a generated ConfigMap, ``name`` plus kustomize's hash."""

    def named(obj: dict[str, Any]) -> bool:
        actual = obj["metadata"]["name"]
        return actual == name or bool(re.fullmatch(rf"{name}-[a-z0-9]{{10}}", actual))

    (found,) = [o for o in objects if o["kind"] == kind and named(o)]
    return found


def pod_templates(
    objects: list[dict[str, Any]] = OBJECTS,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(owner's name, pod template) of every object that makes pods; a CronJob's is in its
    jobTemplate."""
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if obj["kind"] in ("Job", "CronJob", "Deployment", "StatefulSet"):
            yield obj["metadata"]["name"], spec["template"]


def pod_specs(objects: list[dict[str, Any]] = OBJECTS) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, template in pod_templates(objects):
        yield name, template["spec"]


def containers(objects: list[dict[str, Any]] = OBJECTS) -> Iterator[dict[str, Any]]:
    for _, spec in pod_specs(objects):
        yield from spec.get("initContainers", []) + spec["containers"]


def hpsearch_pods(objects: list[dict[str, Any]] = OBJECTS) -> dict[str, dict[str, Any]]:
    return {
        name: spec
        for name, spec in pod_specs(objects)
        if spec["containers"][0]["image"] == HPSEARCH_IMAGE
    }


def hpsearch_containers(objects: list[dict[str, Any]] = OBJECTS) -> list[dict[str, Any]]:
    return [c for c in containers(objects) if c["image"] == HPSEARCH_IMAGE]


def env_value(container: dict[str, Any], name: str, objects: list[dict[str, Any]] = OBJECTS) -> str:
    """A variable's literal value in the container: its own env, else the ConfigMaps it loads."""
    for item in container.get("env", []):
        if item["name"] == name:
            return str(item["value"])
    for source in container.get("envFrom", []):
        data = find("ConfigMap", source["configMapRef"]["name"], objects)["data"]
        if name in data:
            return str(data[name])
    raise KeyError(name)


def settings(objects: list[dict[str, Any]] = OBJECTS) -> dict[str, str]:
    return find("ConfigMap", "hpsearch-settings", objects)["data"]


def mounted_file(pod: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
    """The pod volume that holds the file ``path`` in ``container``."""
    for mount in container.get("volumeMounts", []):
        if path.startswith(mount["mountPath"].rstrip("/") + "/") or path == mount["mountPath"]:
            (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            return volume
    raise KeyError(path)


def option(args: list[str], flag: str) -> str:
    return str(args[args.index(flag) + 1])


def cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def docs_commands() -> list[str]:
    """The command lines of docs/cluster.md's code blocks, continuation lines joined."""
    blocks = re.findall(r"^```\w*\n(.*?)^```", DOCS, re.M | re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [re.sub(r"(^|\s)#.*", "", line) for line in lines]


def created_secrets() -> set[tuple[str, str]]:
    """(secret, key) of every `kubectl create secret generic NAME --from-literal=KEY=...` (or
    --from-file=KEY=...) in docs/cluster.md."""
    return {
        (match.group(1), key)
        for line in docs_commands()
        if (match := re.search(r"kubectl (?:-n \w+ )?create secret generic ([\w-]+)", line))
        for key in re.findall(r"--from-(?:literal|file)=([\w.-]+)=", line)
    }


# -- the manifests themselves ---------------------------------------------------------------


def test_kustomizations_list_every_manifest() -> None:
    base = kustomization(BASE)
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(base["resources"]) == sorted(files)
    generated = {
        f for g in base["configMapGenerator"] for f in g.get("files", []) + g.get("envs", [])
    }
    assert generated == {"settings.env"} | {
        f"scripts/{p.name}" for p in (BASE / "scripts").iterdir()
    }
    assert kustomization(GPU)["resources"] == ["../base"]
    patched = {p.name for p in GPU.glob("*.yaml")} - {"kustomization.yaml"}
    assert {patch["path"] for patch in kustomization(GPU)["patches"]} == patched
    for patch in (doc for p in patched for doc in load(GPU / p)):
        # A patch of something that is not there would add it.
        target = find(patch["kind"], patch["metadata"]["name"])["spec"]["template"]["spec"]
        names = {c["name"] for c in target["containers"]}
        assert {c["name"] for c in patch["spec"]["template"]["spec"]["containers"]} <= names
    assert kustomization(PGBOUNCER)["resources"] == ["../base", "pgbouncer.yaml"]
    for objects in VARIANTS.values():  # everything in hpsearch's namespace
        for obj in objects:
            if obj["kind"] not in ("Namespace", "PriorityClass"):
                assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly(version: str) -> None:
    every = {json.dumps(o, sort_keys=True): o for objects in VARIANTS.values() for o in objects}
    for obj in every.values():
        kubernetes_validate.validate(obj, version, strict=True)
    for patch in load(GPU / "workers.yaml"):  # a misspelled field in a patch is added silently
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


def checkov() -> str:
    """checkov's path: $CHECKOV (.ci/run installs it in a virtual environment of its own, as
    its pinned dependencies clash with the project's), or on PATH."""
    path = os.environ.get("CHECKOV") or shutil.which("checkov")
    if path is None:
        message = "checkov is not installed (pip install checkov; .ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_checkov_finds_no_failed_check_and_every_skip_says_why() -> None:
    result = subprocess.run(
        [checkov(), "-d", str(KUBE), "--framework", "kustomize", "--output", "json", "--quiet"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "FALSE"},
    )  # fmt: skip
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{c['check_id']} {c['resource']}" for r in reports for c in r["results"]["failed_checks"]
    ]
    assert not failed, failed
    assert sum(r["summary"]["passed"] for r in reports) > 1000  # it did check the objects
    for objects in VARIANTS.values():
        for obj in objects:
            for key, value in obj["metadata"].get("annotations", {}).items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = value.partition("=")
                    assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(reason) > 20, value


def test_images_are_pinned() -> None:
    assert IMAGES["hpsearch"]["newTag"] == VERSION  # the package's version
    for objects in VARIANTS.values():
        for container in containers(objects):
            name, _, tag = container["image"].rpartition(":")
            assert name and tag and tag != "latest", container["image"]
            assert container["imagePullPolicy"] == "IfNotPresent", container["name"]
    compose_postgres = COMPOSE["services"]["postgres"]["image"]  # postgres:16 there too
    assert IMAGES["postgres"]["newTag"].split(".")[0] == compose_postgres.split(":")[1]


def test_the_image_runs_hpsearch_under_an_init() -> None:
    assert re.search(r"^ENTRYPOINT \[\"/usr/bin/tini\", \"--\", \"hpsearch\"\]$", DOCKERFILE, re.M)
    assert re.search(r"apt-get install .*\btini\b", DOCKERFILE)


# -- the manifests agree with hpsearch, the Dockerfile and docker-compose ---------------------


def test_one_image_name_everywhere() -> None:
    image = COMPOSE["services"]["worker"]["image"]
    assert COMPOSE["services"]["dashboard"]["image"] == image
    assert image.split(":")[0] == IMAGES["hpsearch"]["name"]
    assert set(hpsearch_pods()) == {
        "hpsearch-create", "hpsearch-workers", "hpsearch-dashboard", "hpsearch-finalize"
    }  # fmt: skip
    postgres = f"{IMAGES['postgres']['newName']}:{IMAGES['postgres']['newTag']}"
    assert {c["image"] for c in containers()} == {HPSEARCH_IMAGE, postgres}


def command_lines() -> list[tuple[str, list[str]]]:
    """Every hpsearch command line of the manifests (all variants) and docker-compose.yml."""
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


def test_docs_commands_exist() -> None:
    commands = cli_commands()
    used = {
        m for line in docs_commands() for m in re.findall(r"(?<!-n )\bhpsearch (\w[\w-]*)", line)
    }
    assert used and used <= set(commands), used - set(commands)
    # Objects the page names (job/x, service/x, ...) are the manifests'.
    kinds = {"job": "Job", "service": "Service", "deployment": "Deployment"}
    kinds |= {"statefulset": "StatefulSet", "cronjob": "CronJob", "pvc": "PersistentVolumeClaim"}
    every = [obj for objects in VARIANTS.values() for obj in objects]
    # finalize and restore start from templates, which `kubectl apply` never starts.
    made = dict(
        re.findall(r"kubectl -n hpsearch create job --from=cronjob/([\w-]+) ([\w-]+)", DOCS)
    )
    started = list(made)
    pattern = r"\b(job|service|deployment|statefulset|cronjob|pvc)/([\w-]+)"
    for kind, name in re.findall(pattern, DOCS):
        if kind == "job" and name in made.values():
            continue  # a Job the page makes from a template
        assert [o for o in every if o["kind"] == kinds[kind] and o["metadata"]["name"] == name]
    assert {"hpsearch-finalize", "hpsearch-restore"} <= set(started)
    for name in set(started) - {"hpsearch-backup"}:
        assert find("CronJob", name)["spec"]["suspend"] is True
    assert "kubectl patch job" not in DOCS
    for line in docs_commands():  # every kubectl command names the namespace
        # (apply -k and delete -k take it from the kustomization)
        if re.search(r"\bkubectl (?!kustomize|apply -[kf]|delete -k)", line):
            assert "kubectl -n hpsearch " in line, line


def hpsearch_names(text: str) -> set[str]:
    return set(re.findall(r"\bHPSEARCH_[A-Z_]+", text))


def test_every_hpsearch_variable_is_one_hpsearch_reads() -> None:
    used: dict[str, set[str]] = {
        "settings.env": set(settings()),
        "docker-compose.yml": hpsearch_names((REPO / "docker-compose.yml").read_text()),
        ".env.example": hpsearch_names((REPO / ".env.example").read_text()),
        "Dockerfile": hpsearch_names(DOCKERFILE),
        "docs/cluster.md": hpsearch_names(DOCS),
    }
    for variant, objects in VARIANTS.items():
        used[variant] = {item["name"] for c in containers(objects) for item in c.get("env", [])}
    allowed = HPSEARCH_VARIABLES | LAUNCHER_VARIABLES | {"HPSEARCH_DB_USER"}  # the init script's
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
                    assert env_value(container, name, objects), f"{variant}/{container['name']}"


def test_study_and_trials_agree() -> None:
    env = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    compose_run = [str(a) for a in COMPOSE["services"]["worker"]["command"]]
    assert compose_run[:4] == [
        "run",
        "${HPSEARCH_STUDY:-usps}",
        "--trials",
        "${HPSEARCH_TRIALS:-200}",
    ]
    for name, default in (("HPSEARCH_STUDY", "usps"), ("HPSEARCH_TRIALS", "200")):
        assert settings()[name] == env[name] == default
    assert settings()["HPSEARCH_STUDY"] in packaged_studies()
    for variant, objects in VARIANTS.items():
        args = {c["name"]: c["args"] for c in hpsearch_containers(objects)}
        assert args["worker"][:4] == ["run", "$(HPSEARCH_STUDY)", "--trials", "$(HPSEARCH_TRIALS)"]
        assert args["create"] == ["create", "$(HPSEARCH_STUDY)"], variant
        assert args["finalize"][:2] == ["finalize", "$(HPSEARCH_STUDY)"], variant


def test_dashboard_port_and_probes_agree() -> None:
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
    for probe in ("readinessProbe", "livenessProbe"):  # the path answered without the database
        assert container[probe]["httpGet"] == {"path": HEALTH_PATH, "port": "http"}
    assert f"kubectl -n hpsearch port-forward service/hpsearch-dashboard {port}:{port}" in DOCS


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


def test_storage_url_is_the_role_hpsearch_on_the_postgres_service() -> None:
    url = make_url(settings()["HPSEARCH_STORAGE"])
    compose_url = COMPOSE["services"]["worker"]["environment"]["HPSEARCH_STORAGE"]
    assert url.drivername == compose_url.split(":", 1)[0] == "postgresql+psycopg"
    assert url.password is None  # the password is the secret's file
    service = find("Service", str(url.host))
    assert url.port == service["spec"]["ports"][0]["port"]
    statefulset = find("StatefulSet", "postgres")
    assert statefulset["spec"]["serviceName"] == url.host
    (postgres,) = statefulset["spec"]["template"]["spec"]["containers"]
    # hpsearch's role is made by the init script, and is not the image's superuser.
    script = (BASE / "scripts" / "init-hpsearch-role.sh").read_text()
    assert f'role="${{HPSEARCH_DB_USER:-{url.username}}}"' in script
    assert url.username != env_value(postgres, "POSTGRES_USER")
    assert url.database == env_value(postgres, "POSTGRES_DB")
    # Ready only once it answers over TCP (the image's set-up server listens on the socket).
    command = postgres["readinessProbe"]["exec"]["command"]
    assert command[:3] == ["pg_isready", "-h", "127.0.0.1"] and "livenessProbe" in postgres
    mounts = {m["name"]: m["mountPath"] for m in postgres["volumeMounts"]}
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert env_value(postgres, "PGDATA").startswith(mounts[claim["metadata"]["name"]] + "/")
    assert "/docker-entrypoint-initdb.d/init-hpsearch-role.sh" in mounts.values()


def test_secrets_are_files_never_written() -> None:
    assert not [o for objects in VARIANTS.values() for o in objects if o["kind"] == "Secret"]
    for path in [*KUBE.rglob("*.yaml"), *KUBE.rglob("*.env")]:
        assert not re.search(r"(?im)^[^#\n]*password\s*[:=]\s*\S", path.read_text()), path
    created = created_secrets()
    assert {
        (DB_SECRET, "password"),
        (DB_SECRET, "superuser-password"),
        (S3_SECRET, "credentials"),
    } <= created
    for variant, objects in VARIANTS.items():
        for container in containers(objects):  # no secret in any environment
            assert not [e for e in container.get("env", []) if "valueFrom" in e], container["name"]
        for name, pod in pod_specs(objects):
            for volume in pod.get("volumes", []):
                if "secret" in volume:
                    secret = volume["secret"]
                    keys = [i["key"] for i in secret.get("items", [])]
                    assert all((secret["secretName"], k) in created for k in keys), name
                    # The database password is required; S3 keys are optional (pod identities).
                    assert secret.get("optional", False) == (secret["secretName"] == S3_SECRET)
        for name, pod in hpsearch_pods(objects).items():
            container = pod["containers"][0]
            password = env_value(container, PASSWORD_FILE_ENV, objects)
            volume = mounted_file(pod, container, password)
            assert volume["secret"]["secretName"] == DB_SECRET, (variant, name)
            assert Path(password).name == "password"
            credentials = env_value(container, "AWS_SHARED_CREDENTIALS_FILE", objects)
            assert mounted_file(pod, container, credentials)["secret"]["secretName"] == S3_SECRET
    (postgres,) = find("StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"]
    pod = find("StatefulSet", "postgres")["spec"]["template"]["spec"]
    for variable, key in (
        ("POSTGRES_PASSWORD_FILE", "superuser-password"),
        (PASSWORD_FILE_ENV, "password"),
    ):
        path = env_value(postgres, variable)
        assert mounted_file(pod, postgres, path)["secret"]["secretName"] == DB_SECRET
        assert Path(path).name == key


def test_artifacts_go_to_s3_and_no_unshipped_endpoint_is_named() -> None:
    data = settings()
    assert data["HPSEARCH_ARTIFACTS"].startswith("s3://")
    assert "AWS_ENDPOINT_URL" not in data  # no MinIO is shipped: AWS S3 unless the user adds one
    assert "AWS_DEFAULT_REGION" in data
    for objects in VARIANTS.values():
        for container in hpsearch_containers(objects):
            if container["args"][0] in ("run", "dashboard", "finalize"):
                assert (
                    env_value(container, "HPSEARCH_ARTIFACTS", objects)
                    == data["HPSEARCH_ARTIFACTS"]
                )


# -- what each failure does: docs/cluster.md's table -------------------------------------------

EXIT_ACTIONS = {  # hpsearch's exit code -> what the workers Job does with it
    HpsearchError.exit_code: "FailJob",
    DeviceMissing.exit_code: "FailIndex",
    TrialsFailing.exit_code: "FailIndex",
    Unavailable.exit_code: "Ignore",
}


def exit_code_rules(spec: dict[str, Any], container: str) -> dict[int, str]:
    actions: dict[int, str] = {}
    for rule in spec["podFailurePolicy"]["rules"]:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == container
            assert rule["onExitCodes"]["operator"] == "In"
            for code in rule["onExitCodes"]["values"]:
                actions[code] = rule["action"]
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in spec["podFailurePolicy"]["rules"]
    return actions


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_workers_act_on_each_exit_code(variant: str) -> None:
    spec = find("Job", "hpsearch-workers", VARIANTS[variant])["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 1
    assert spec["backoffLimitPerIndex"] >= 1
    assert spec["maxFailedIndexes"] == spec["completions"] // 2  # the documented rule
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy
    assert exit_code_rules(spec, "worker") == EXIT_ACTIONS
    assert [c["name"] for c in spec["template"]["spec"]["containers"]] == ["worker"]


def test_one_shot_jobs_act_on_each_exit_code() -> None:
    create = find("Job", "hpsearch-create")["spec"]
    assert exit_code_rules(create, "create") == {2: "FailJob", 75: "Ignore"}
    finalize = find("CronJob", "hpsearch-finalize")["spec"]["jobTemplate"]["spec"]
    assert exit_code_rules(finalize, "finalize") == {2: "FailJob", 69: "FailJob", 75: "Ignore"}
    for spec in (create, finalize):
        assert spec["activeDeadlineSeconds"] > 0  # Ignore never loops forever


def failure_table() -> dict[str, str]:
    """docs/cluster.md's table of exit codes: code -> what the workers Job does."""
    section = DOCS.split("### What each failure does", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `?(\d+)`? \| [^|]+ \| ([^|]+) \|", section, re.M)
    return {code: action.strip() for code, action in rows}


def test_docs_failure_table_matches_the_codes_and_the_job() -> None:
    table = failure_table()
    assert set(table) == {str(code) for code in EXIT_ACTIONS} | {"1", "130", "137"}
    for code, action in EXIT_ACTIONS.items():
        assert table[str(code)].startswith(f"`{action}`"), (code, table[str(code)])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_worker_processes_match_the_cpu_limit(variant: str) -> None:
    """Processes x threads = the CPU limit: a container sees its node's every core, so
    hpsearch's defaults would oversubscribe it."""
    objects = VARIANTS[variant]
    (worker,) = find("Job", "hpsearch-workers", objects)["spec"]["template"]["spec"]["containers"]
    processes = int(env_value(worker, "HPSEARCH_WORKERS", objects))
    threads = int(option(worker["args"], "--threads"))
    resources = worker["resources"]
    assert (
        processes * threads
        == cpus(resources["limits"]["cpu"])
        == cpus(resources["requests"]["cpu"])
    )
    gpus = int(resources["limits"].get("nvidia.com/gpu", 0))
    assert env_value(worker, "HPSEARCH_DEVICE", objects) == ("cuda" if variant == "gpu" else "cpu")
    assert gpus == (1 if variant == "gpu" else 0)


def test_finalize_pods_share_the_retrains_within_their_cpu_limit() -> None:
    (finalize,) = hpsearch_pods()["hpsearch-finalize"]["containers"]
    limit = cpus(finalize["resources"]["limits"]["cpu"])
    assert int(env_value(finalize, "OMP_NUM_THREADS")) == limit  # PyTorch's thread count
    processes = int(option(finalize["args"], "--workers"))
    assert processes * int(option(finalize["args"], "--threads")) == limit
    spec = find("CronJob", "hpsearch-finalize")["spec"]["jobTemplate"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"] > 1
    assert spec["maxFailedIndexes"] == spec["completions"] // 2


# -- least privilege ---------------------------------------------------------------------------


def test_pods_run_with_least_privilege() -> None:
    uid, gid = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE, re.M).groups()  # type: ignore[union-attr]
    assert re.search(rf"useradd --uid {uid} .*\bhpsearch\b", DOCKERFILE)
    account = find("ServiceAccount", "hpsearch")
    assert account["automountServiceAccountToken"] is False
    for variant, objects in VARIANTS.items():
        for name, pod in pod_specs(objects):
            assert pod["automountServiceAccountToken"] is False, name
            context = pod["securityContext"]
            assert context["runAsNonRoot"] is True, name
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
            if name in hpsearch_pods(objects):
                assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid)), name
                assert pod["serviceAccountName"] == "hpsearch"
            writable = {
                m["mountPath"]
                for c in pod.get("initContainers", []) + pod["containers"]
                for m in c.get("volumeMounts", [])
                if not m.get("readOnly")
            }
            if name in hpsearch_pods(objects):
                assert {"/tmp", "/home/hpsearch"} <= writable, name
        for container in containers(objects):
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, container["name"]
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), (variant, container["name"])
            assert {"cpu", "memory"} <= set(resources["limits"]), (variant, container["name"])


def test_every_hpsearch_pod_waits_for_the_database() -> None:
    for objects in VARIANTS.values():
        for name, pod in hpsearch_pods(objects).items():
            (wait,) = pod["initContainers"]
            assert (
                "until pg_isready" in wait["command"][-1]
                and "$HPSEARCH_STORAGE" in wait["command"][-1]
            )
            assert (
                env_value(wait, "HPSEARCH_STORAGE", objects)
                == settings(objects)["HPSEARCH_STORAGE"]
            )
            assert int(env_value(pod["containers"][0], "HPSEARCH_DB_WAIT", objects)) >= 60, name


def test_the_wait_for_the_database_ends_when_a_server_started_late_answers() -> None:
    # The init containers' own command, run by sh against a PostgreSQL that is not up yet:
    # it waits (no trial started, no retry spent) and ends 0 once the server answers.
    servers.require("pg_isready", "PostgreSQL's client programs")
    commands = {
        tuple(pod["initContainers"][0]["command"])
        for objects in VARIANTS.values()
        for pod in hpsearch_pods(objects).values()
    }
    (command,) = commands  # one wait, shared by every hpsearch pod of every variant
    with servers.own_postgres(start=False) as (url, ctl):
        wait = subprocess.Popen(
            list(command),
            env={**os.environ, "HPSEARCH_STORAGE": url},
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert wait.stdout is not None
            assert wait.stdout.readline() == "waiting for the database\n"
            time.sleep(3)
            assert wait.poll() is None  # still waiting
            subprocess.run([*ctl, "start"], check=True, capture_output=True)
            assert wait.wait(timeout=30) == 0
        finally:
            wait.kill()


def test_the_database_is_durable() -> None:
    statefulset = find("StatefulSet", "postgres")
    pod = statefulset["spec"]["template"]["spec"]
    (postgres,) = pod["containers"]
    resources = postgres["resources"]
    assert resources["requests"] == resources["limits"]  # Guaranteed QoS
    priority = find("PriorityClass", pod["priorityClassName"])
    assert priority["value"] > 0 and not priority.get("globalDefault")
    budget = find("PodDisruptionBudget", "postgres")["spec"]
    assert budget["maxUnavailable"] == 0
    assert budget["selector"] == statefulset["spec"]["selector"]
    # One connection per worker process, plus room for the rest (docs/workers.md).
    connections = int(option(postgres["args"], "-c").split("=")[1])
    workers = find("Job", "hpsearch-workers")["spec"]
    processes = workers["parallelism"] * int(
        env_value(workers["template"]["spec"]["containers"][0], "HPSEARCH_WORKERS")
    )
    assert option(postgres["args"], "-c").startswith("max_connections=")
    assert connections >= processes + 10
    backup = find("CronJob", "hpsearch-backup")["spec"]
    assert backup["concurrencyPolicy"] == "Forbid" and not backup.get("suspend")
    (claim,) = [
        v["persistentVolumeClaim"]["claimName"]
        for v in backup["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert find("PersistentVolumeClaim", claim)


# -- network policies --------------------------------------------------------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # all these policies use
    return selector.get("matchLabels", {}).items() <= labels.items()


def allowed(
    objects: list[dict[str, Any]], source: dict[str, str], target: dict[str, str] | None, port: int
) -> bool:
    """Whether a pod labelled ``source`` may open a TCP connection to ``port`` of a pod
    labelled ``target`` in the namespace (None: an address outside the cluster), under the
    NetworkPolicy rules: each direction is allowed if no policy of its type selects the pod,
    or any selecting policy has a rule that admits it."""
    policies = [o["spec"] for o in objects if o["kind"] == "NetworkPolicy"]

    def admitted(direction: str, pod: dict[str, str], peer: dict[str, str] | None) -> bool:
        kind = "Ingress" if direction == "ingress" else "Egress"
        selecting = [
            p for p in policies if kind in p["policyTypes"] and selects(p["podSelector"], pod)
        ]
        if not selecting:
            return True
        for policy in selecting:
            for rule in policy.get(direction, []):
                peers = rule.get("to" if direction == "egress" else "from")
                ports = rule.get("ports")
                port_ok = ports is None or any(
                    p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in ports
                )
                peer_ok = peers is None or any(
                    "podSelector" in q
                    and "namespaceSelector" not in q
                    and peer is not None
                    and selects(q["podSelector"], peer)
                    for q in peers
                )
                if port_ok and peer_ok:
                    return True
        return False

    if not admitted("egress", source, target):
        return False
    return target is None or admitted("ingress", target, source)


HPSEARCH = {"app.kubernetes.io/name": "hpsearch", "app.kubernetes.io/component": "worker"}
DASHBOARD = {"app.kubernetes.io/name": "hpsearch", "app.kubernetes.io/component": "dashboard"}
POSTGRES = {"app.kubernetes.io/name": "postgres", "app.kubernetes.io/component": "database"}
BACKUP = {"app.kubernetes.io/name": "postgres", "app.kubernetes.io/component": "backup"}
PGBOUNCER_POD = {"app.kubernetes.io/name": "pgbouncer"}
OTHER = {"app": "something-else"}


def test_network_policies_allow_only_the_paths_the_study_needs() -> None:
    base = VARIANTS["base"]
    for labels in (HPSEARCH, DASHBOARD):
        assert allowed(base, labels, POSTGRES, 5432)
        assert allowed(base, labels, None, 443)  # S3
        assert not allowed(base, labels, None, 5432)
    assert allowed(base, BACKUP, POSTGRES, 5432)
    assert not allowed(base, BACKUP, None, 443)
    assert not allowed(base, OTHER, POSTGRES, 5432)
    for source in (HPSEARCH, OTHER, POSTGRES):  # the dashboard: port-forward only
        assert not allowed(base, source, DASHBOARD, 8080)
    assert not allowed(base, POSTGRES, None, 443)
    assert not allowed(base, HPSEARCH, HPSEARCH, 8080)
    # Through PgBouncer: the workers reach it, it reaches PostgreSQL.
    objects = VARIANTS["pgbouncer"]
    assert allowed(objects, HPSEARCH, PGBOUNCER_POD, 6432)
    assert allowed(objects, PGBOUNCER_POD, POSTGRES, 5432)
    assert not allowed(objects, OTHER, PGBOUNCER_POD, 6432)
    assert not allowed(objects, PGBOUNCER_POD, None, 443)
    # The pods carry the labels the policies name.
    pods = {name: template["metadata"]["labels"] for name, template in pod_templates(base)}
    assert pods["hpsearch-workers"] == HPSEARCH and pods["hpsearch-dashboard"] == DASHBOARD
    assert pods["postgres"] == POSTGRES and pods["hpsearch-backup"] == BACKUP


# -- PgBouncer between the workers and PostgreSQL ----------------------------------------------


def test_pgbouncer_sits_between_the_workers_and_postgres() -> None:
    objects = VARIANTS["pgbouncer"]
    url = make_url(settings(objects)["HPSEARCH_STORAGE"])
    service = find("Service", str(url.host), objects)
    assert url.port == service["spec"]["ports"][0]["port"]
    deployment = find("Deployment", "pgbouncer", objects)
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    (image,) = kustomization(PGBOUNCER)["images"]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"
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
    # Transaction mode, a pool that leaves room in PostgreSQL's max_connections, and
    # hpsearch's `options` ignored, its limits set in PgBouncer instead.
    pgbouncer = ini["pgbouncer"]
    assert pgbouncer["pool_mode"] == "transaction"
    assert int(pgbouncer["max_db_connections"]) <= 50
    assert "options" in pgbouncer["ignore_startup_parameters"].split(",")
    assert pgbouncer["tcp_keepalive"] == "1" and int(pgbouncer["idle_transaction_timeout"]) > 0
    # The auth file is the secret the docs create.
    (auth,) = [v for v in pod["spec"]["volumes"] if v["name"] == "auth"]
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["auth"]
    assert pgbouncer["auth_file"].startswith(mount + "/")
    assert (auth["secret"]["secretName"], Path(pgbouncer["auth_file"]).name) in created_secrets()
    # The rest of the deployment is the base's, with the settings' database URL changed.
    changed = {k for k in settings(objects) if settings(objects)[k] != settings()[k]}
    assert changed == {"HPSEARCH_STORAGE"}


def test_the_tests_the_failure_tables_name_exist() -> None:
    named = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", DOCS)
    assert len(named) >= 8
    for path, test in named:
        assert re.search(rf"^def {test}\(", (REPO / path).read_text(), re.M), f"{path}::{test}"
