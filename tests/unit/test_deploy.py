"""deploy/ is checked, not only written: rules (promtool), dashboard, Dockerfile, compose file, Kubernetes manifests.

No Docker and no network here: the Kubernetes schemas come from the pinned `kubernetes-validate` package,
the Compose Specification's schema is vendored in deploy/schemas/, and the Dockerfile is parsed by BuildKit's
own parser (the `dockerfile` package). promtool comes from Debian's `prometheus` package
(scripts/system-deps.sh); without it those tests skip, or fail when CI=true.
tests/integration/test_prometheus.py evaluates the dashboard and the rules against a real worker.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ElementTree
from functools import cache
from pathlib import Path
from typing import Any

import dockerfile
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.tools import require_binary
from worker.settings import Settings, settings_table

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES_DIR = DEPLOY / "prometheus" / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
PROMTOOL_TESTS = DEPLOY / "prometheus" / "tests" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "compliance-worker.json"
K8S = DEPLOY / "k8s"
SCHEMAS = DEPLOY / "schemas"
RUNBOOK = ROOT / "docs" / "runbook.md"
OPERATIONS = ROOT / "docs" / "operations.md"
# The oldest and the newest Kubernetes minor that kubernetes-validate 1.37.0 carries and we support.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
JOB = "compliance-worker"
PINNED_TAG = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+[\w.-]*$")  # name:1.2.3[-suffix], never latest or 3.11


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def promtool() -> str:
    return require_binary("promtool", "Debian package prometheus; scripts/system-deps.sh installs it")


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=120)


@cache
def rules() -> dict[str, dict[str, Any]]:
    """Every rule by alert or record name."""
    found: dict[str, dict[str, Any]] = {}
    for path in RULE_FILES:
        for group in read_yaml(path)["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule["record"]
                assert name not in found, f"duplicate rule {name}"
                found[name] = rule
    return found


def alerts() -> list[str]:
    return [name for name, rule in rules().items() if "alert" in rule]


# ------------------------------------------------------------------ Prometheus rules


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES)


def test_promtool_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", PROMTOOL_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_issue_asks_for_these_alerts() -> None:
    assert {
        "ComplianceConsumerLagGrowing",  # lag growing for 10 min
        "ComplianceWorkerStalled",  # no events consumed while lag > 0
        "ComplianceDeadLetterRateHigh",
        "ComplianceWorkerDown", "ComplianceNoWorkerUp",
        "ComplianceDecisionLatencyHigh",
        "CompliancePolicyRejected",
    } <= set(alerts())


@pytest.mark.parametrize("alert", alerts())
def test_alert_has_severity_summary_description_and_runbook_section(alert: str) -> None:
    rule = rules()[alert]
    assert rule["labels"]["severity"] in ("critical", "warning")
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and len(annotations["description"]) > 60
    anchor = alert.lower()
    assert annotations["runbook_url"] == f"docs/runbook.md#{anchor}"
    headings = re.findall(r"^## (\S+)\s*$", RUNBOOK.read_text(encoding="utf-8"), re.MULTILINE)
    assert alert in headings, f"docs/runbook.md has no '## {alert}' section"
    section = RUNBOOK.read_text(encoding="utf-8").split(f"## {alert}\n", 1)[1].split("\n## ", 1)[0]
    for part in ("Meaning", "Check", "Act"):
        assert f"**{part}**" in section, f"{alert}: the runbook section needs a **{part}** part"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in read_yaml(PROMTOOL_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == set(alerts()), f"alerts never shown to fire: {set(alerts()) - firing}"
    assert quiet == set(alerts()), f"alerts never shown to stay quiet: {set(alerts()) - quiet}"


def test_alerts_only_use_recorded_series_that_are_recorded() -> None:
    recorded = {name for name, rule in rules().items() if "record" in rule}
    for name in alerts():
        used = set(re.findall(r"\b\w+:\w+:\w+\b", rules()[name]["expr"]))
        assert used <= recorded, f"{name} uses unknown recorded series {used - recorded}"


@pytest.mark.parametrize("mutation", ["never fires", "always fires"])
@pytest.mark.parametrize("alert", alerts())
def test_the_unit_tests_catch_a_broken_alert(alert: str, mutation: str, tmp_path: Path) -> None:
    """Replace one alert's expression; promtool's unit tests must then fail on that alert."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    for path in RULE_FILES:
        document = read_yaml(path)
        for group in document["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == alert:
                    rule["expr"] = "vector(1) < 0" if mutation == "never fires" else "vector(1)"
        (tmp_path / "rules" / path.name).write_text(yaml.safe_dump(document), encoding="utf-8")
    shutil.copy(PROMTOOL_TESTS, tmp_path / "tests" / PROMTOOL_TESTS.name)
    result = run_promtool("test", "rules", tmp_path / "tests" / PROMTOOL_TESTS.name)
    assert result.returncode != 0, f"the unit tests did not notice that {alert} {mutation}"
    assert f"alertname: {alert}," in result.stdout + result.stderr


def test_compose_prometheus_config_is_valid_and_scrapes_the_job_the_alerts_expect() -> None:
    config_path = DEPLOY / "prometheus" / "prometheus.yml"
    result = run_promtool("check", "config", config_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout
    config = read_yaml(config_path)
    assert [job["job_name"] for job in config["scrape_configs"]] == [JOB]
    for name in ("ComplianceNoWorkerUp", "ComplianceWorkerDown"):
        assert f'job="{JOB}"' in rules()[name]["expr"]


# ------------------------------------------------------------------ Grafana dashboard


def load_builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_dashboard", DEPLOY / "grafana" / "build_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def test_committed_dashboard_is_what_the_builder_makes() -> None:
    assert DASHBOARD.read_text(encoding="utf-8") == load_builder().render(), (
        "run: python deploy/grafana/build_dashboard.py"
    )


def test_dashboard_is_importable_with_a_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] == "compliance-worker" and board["title"]
    assert "id" not in board, "an id would clash on import; Grafana assigns one"
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["includeAll"] and variables["instance"]["allValue"] == ".*"
    for variable in (variables["job"], variables["instance"]):
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = [panel["title"] for panel in board["panels"]]
    assert len(titles) == len(set(titles)), "titles are unique (docs/operations.md has one section per panel)"


def test_every_panel_queries_prometheus_through_the_variable_and_says_what_it_shows() -> None:
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert len(panel["description"]) > 30, panel["title"]
        assert panel["targets"], panel["title"]
        for query in panel["targets"]:
            assert query["datasource"] == panel["datasource"]
            variables = set(re.findall(r"\$\w+", query["expr"]))
            assert variables <= {"$job", "$instance", "$__rate_interval"}, (panel["title"], variables)
            assert "$job" in query["expr"], f"{panel['title']}: every query follows the job variable"


def test_panels_fit_the_grid_without_overlapping() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_dashboard_covers_what_the_issue_asks_for() -> None:
    queries = " ".join(query["expr"] for panel in panels() for query in panel["targets"])
    for needed in (
        "faust_messages_received_total",  # throughput in
        "compliance_decisions_total", "compliance_dead_letters_total", "compliance_tombstones_total",  # out
        'decision="block"',  # block ratio
        "sum by (code)",  # dead letters by code
        "histogram_quantile(0.50", "histogram_quantile(0.99",  # latency p50 / p99
        "max by (topic, partition) (compliance_consumer_lag", "sum by (topic)",  # lag per partition and total
        "faust_rebalance_done_latency_count",  # rebalances
        'up{job="$job"} == 1',  # worker count
        "compliance_policy_info",  # policy version
        "process_cpu_seconds_total", "process_resident_memory_bytes",
    ):
        assert needed in queries, needed
    recorded = {name for name, rule in rules().items() if "record" in rule}
    used = set(re.findall(r"\b\w+:\w+:\w+\b", queries))
    assert used and used <= recorded, f"unknown recorded series: {used - recorded}"


def test_every_panel_is_described_in_the_operations_guide() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    headings = set(re.findall(r"^#### (.+?)\s*$", text, re.MULTILINE))
    missing = [panel["title"] for panel in panels() if panel["title"] not in headings]
    assert not missing, f"docs/operations.md has no '#### <title>' section for {missing}"


# ------------------------------------------------------------------ Dockerfile


def dockerfile_commands() -> list[Any]:
    return list(dockerfile.parse_file(str(DEPLOY / "Dockerfile")))


def test_dockerfile_base_is_a_pinned_slim_python_and_the_image_runs_as_non_root() -> None:
    commands = dockerfile_commands()
    args = dict(command.value[0].split("=", 1) for command in commands if command.cmd == "ARG")
    bases = [command.value[0].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", "")) for command in commands
             if command.cmd == "FROM"]
    assert bases and all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base) for base in bases), bases
    final_stage = commands[max(i for i, command in enumerate(commands) if command.cmd == "FROM"):]
    users = [command.value[0] for command in final_stage if command.cmd == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) >= 1000, users
    workers = read_yaml(K8S / "statefulset.yaml")
    assert int(users[-1].split(":")[0]) == workers["spec"]["template"]["spec"]["securityContext"]["runAsUser"]


def test_the_image_creates_the_default_state_dir_for_its_user() -> None:
    """A pod's volume is mounted over it; without one (docker run) the worker must still be able to write there."""
    commands = dockerfile_commands()
    final_stage = commands[max(i for i, command in enumerate(commands) if command.cmd == "FROM"):]
    user = next(command.value[0] for command in reversed(final_stage) if command.cmd == "USER")
    uid, gid = user.split(":")
    state_dir = dict(settings_table())["STATE_DIR"]
    runs = " ".join(command.value[0] for command in final_stage if command.cmd == "RUN")
    assert re.search(rf"install -d -o {uid} -g {gid} -m 0750 {re.escape(state_dir)}(\s|$)", runs), runs


def test_dockerfile_exposes_the_web_port_checks_healthz_and_runs_the_worker() -> None:
    commands = {command.cmd: command for command in dockerfile_commands()}
    default_port = dict(settings_table())["WORKER_WEB_PORT"]
    assert commands["EXPOSE"].value == (default_port,)
    assert commands["ENTRYPOINT"].json and commands["ENTRYPOINT"].value == ("compliance-worker", "worker")
    healthcheck = commands["HEALTHCHECK"]
    assert healthcheck.json and healthcheck.value[:3] == ("CMD", "python", "-c")
    code = healthcheck.value[3]
    compile(code, "HEALTHCHECK", "exec")  # valid Python; tests/integration runs it against a real worker
    assert "urllib.request" in code and "/healthz" in code and "WORKER_WEB_PORT" in code
    assert any(flag.startswith("--timeout=") for flag in healthcheck.flags)


def test_dockerfile_copies_only_what_exists_and_the_dockerignore_lets_through() -> None:
    allowed = [line[1:].rstrip("/") for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")]
    copies = [command for command in dockerfile_commands() if command.cmd == "COPY"
              and not any(flag.startswith("--from") for flag in command.flags)]
    assert copies
    for command in copies:
        for source in command.value[:-1]:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is excluded by Dockerfile.dockerignore"
    assert (ROOT / "worker" / "commands" / "cli.py").exists()


# ------------------------------------------------------------------ compose


def compose() -> dict[str, Any]:
    return read_yaml(DEPLOY / "compose.yaml")


def compose_validator() -> jsonschema.Validator:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text(encoding="utf-8"))
    # The file declares draft 2019-09 as "http://json-schema.org/draft/2019-09/schema#", a spelling jsonschema
    # does not look up: name the draft here instead of editing the vendored file.
    assert "2019-09" in schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema, format_checker=jsonschema.Draft201909Validator.FORMAT_CHECKER)


def test_compose_file_validates_against_the_compose_specification() -> None:
    errors = [f"{'/'.join(map(str, error.path))}: {error.message}" for error in compose_validator().iter_errors(compose())]
    assert not errors, errors


def test_the_compose_schema_is_strict_enough_to_catch_a_typo() -> None:
    broken = compose()
    broken["services"]["worker"]["healthckeck"] = {"test": ["CMD", "true"]}
    broken["services"]["kafka"]["depends_on"] = {"worker": {"condition": "service_happy"}}
    assert len(list(compose_validator().iter_errors(broken))) == 2


def test_the_compose_broker_is_the_projects_default_broker_version() -> None:
    pom = ElementTree.parse(ROOT / "kafka" / "pom.xml").getroot()
    version = pom.findtext("m:properties/m:kafka.version", namespaces={"m": "http://maven.apache.org/POM/4.0.0"})
    assert compose()["services"]["kafka"]["image"] == f"apache/kafka:{version}", "kafka/pom.xml's kafka.version"


def test_compose_services_are_wired_together() -> None:
    services = compose()["services"]
    assert set(services) == {"kafka", "worker", "prometheus", "grafana"}
    for name, service in services.items():
        if "image" in service:
            assert PINNED_TAG.match(service["image"]), f"{name}: pin the image by version ({service['image']})"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
    worker = services["worker"]
    assert (DEPLOY / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert (DEPLOY / worker["build"]["context"]).resolve() == ROOT, "the build context is the repository root"
    settings = Settings.from_env(worker["environment"])
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    kafka = services["kafka"]["environment"]
    assert "PLAINTEXT://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    scrape = read_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"][0]["dns_sd_configs"][0]
    assert scrape["names"] == ["worker"] and scrape["port"] == settings.worker_web_port
    datasource = read_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    provider = read_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "compliance-worker.yml")["providers"][0]
    mounted = [volume.split(":")[1] for volume in services["grafana"]["volumes"] if volume.startswith("./grafana/compliance")]
    assert mounted == [f"{provider['options']['path']}/{DASHBOARD.name}"]


# ------------------------------------------------------------------ Kubernetes


@cache
def manifests() -> dict[str, dict[str, Any]]:
    """kind -> manifest, from deploy/k8s/*.yaml (one object per file)."""
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        documents = [document for document in yaml.safe_load_all(path.read_text(encoding="utf-8")) if document]
        assert len(documents) == 1, path
        found[documents[0]["kind"]] = documents[0]
    return found


CORE_KINDS = ("ConfigMap", "StatefulSet", "Service", "PodDisruptionBudget")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kind", CORE_KINDS)
def test_core_manifests_validate_against_the_kubernetes_schemas(kind: str, version: str) -> None:
    assert kubernetes_validate.validate(manifests()[kind], version, strict=True) == version.rsplit(".", 1)[0]


def test_kubernetes_validation_catches_a_misspelt_field() -> None:
    broken = copy.deepcopy(manifests()["StatefulSet"])
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGett"] = container["readinessProbe"].pop("httpGet")
    with pytest.raises(kubernetes_validate.ValidationError, match="httpGett"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("kind, schema", [
    ("PodMonitor", "podmonitor.monitoring.coreos.com-v1.schema.json"),
    ("ScaledObject", "scaledobject.keda.sh-v1alpha1.schema.json"),
])
def test_custom_resources_validate_against_the_vendored_schemas(kind: str, schema: str) -> None:
    document = json.loads((SCHEMAS / schema).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(document)
    validator = jsonschema.Draft202012Validator(document)
    errors = [f"{'/'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(manifests()[kind])]
    assert not errors, errors
    broken = copy.deepcopy(manifests()[kind])
    broken["spec"]["selectr" if kind == "PodMonitor" else "maxReplicas"] = 1
    assert not validator.is_valid(broken)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_scaledobject_hpa_behaviour_is_a_valid_autoscaling_v2_behaviour(version: str) -> None:
    scaled = manifests()["ScaledObject"]["spec"]
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "check"},
        "spec": {
            "scaleTargetRef": scaled["scaleTargetRef"],
            "minReplicas": scaled["minReplicaCount"], "maxReplicas": scaled["maxReplicaCount"],
            "behavior": scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        },
    }
    kubernetes_validate.validate(hpa, version, strict=True)


def test_manifests_agree_with_each_other_and_with_the_settings() -> None:
    configmap, workers = manifests()["ConfigMap"], manifests()["StatefulSet"]
    service, pdb = manifests()["Service"], manifests()["PodDisruptionBudget"]
    podmonitor, scaled = manifests()["PodMonitor"], manifests()["ScaledObject"]

    known = {variable for variable, _default in settings_table()}
    assert set(configmap["data"]) <= known, f"unknown settings {set(configmap['data']) - known}"
    settings = Settings.from_env(configmap["data"])  # the worker's own parser accepts every value

    pod = workers["spec"]["template"]
    labels = pod["metadata"]["labels"]
    selector = workers["spec"]["selector"]["matchLabels"]
    for matcher in (selector, service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"],
                    podmonitor["spec"]["selector"]["matchLabels"]):
        assert matcher.items() <= labels.items(), matcher
    assert labels[podmonitor["spec"]["jobLabel"]] == JOB, "the PodMonitor's job label is what the alerts expect"

    (container,) = pod["spec"]["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": configmap["metadata"]["name"]}}]
    (port,) = container["ports"]
    assert port["containerPort"] == settings.worker_web_port
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(settings.worker_web_port)
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert podmonitor["spec"]["podMetricsEndpoints"][0]["port"] == port["name"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], "Faust's data dir lives in /tmp"

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert PINNED_TAG.match(container["image"]) and container["image"].endswith(f":{version}")
    kustomization = read_yaml(K8S / "kustomization.yaml")
    assert kustomization["images"] == [{"name": "compliance-worker", "newTag": version}]
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert compose()["services"]["worker"]["image"] == f"compliance-worker:{version}"

    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": workers["apiVersion"], "kind": "StatefulSet", "name": workers["metadata"]["name"],
    }
    assert scaled["spec"]["maxReplicaCount"] == settings.topic_partitions, "one worker per partition at most"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["minReplicaCount"] <= workers["spec"]["replicas"] <= scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["topic"] == settings.input_topic
    assert trigger["metadata"]["consumerGroup"] == settings.app_id, "Faust's app id is the consumer group"
    assert trigger["metadata"]["bootstrapServers"] == settings.kafka_bootstrap_servers
    assert trigger["metadata"]["allowIdleConsumers"] == "false"


def test_each_worker_keeps_its_state_on_a_volume_of_its_own_at_state_dir() -> None:
    configmap, workers, service = manifests()["ConfigMap"], manifests()["StatefulSet"], manifests()["Service"]
    settings = Settings.from_env(configmap["data"])
    assert settings.state_store == "rocksdb" and settings.table_standby_replicas >= 1
    spec = workers["spec"]
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], "one pod, one volume"
    assert re.fullmatch(r"\d+Gi", claim["spec"]["resources"]["requests"]["storage"])
    (container,) = spec["template"]["spec"]["containers"]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == str(settings.state_dir)
    assert claim["metadata"]["name"] not in {volume["name"] for volume in spec["template"]["spec"]["volumes"]}, (
        "the claim template, not a pod volume (an emptyDir would lose the state with the pod)"
    )
    assert spec["template"]["spec"]["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    # The governing Service is headless and still lists pods that are not ready.
    assert spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}


def test_rollouts_replace_one_pod_at_a_time_and_drains_take_one_more_at_most() -> None:
    """docs/operations.md#rollouts-and-disruptions: the arithmetic these numbers make."""
    workers, pdb = manifests()["StatefulSet"], manifests()["PodDisruptionBudget"]
    spec = workers["spec"]
    assert spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}, (
        "one pod at a time, each waiting for the one before to be Ready (no maxUnavailable: alpha before 1.35)"
    )
    assert spec["podManagementPolicy"] == "Parallel"
    assert pdb["spec"] == {
        "maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow", "selector": pdb["spec"]["selector"],
    }, "maxUnavailable, never minAvailable: KEDA moves the replica count"
    (container,) = spec["template"]["spec"]["containers"]
    readiness = container["readinessProbe"]
    assert readiness["httpGet"]["path"] == "/readyz" and "initialDelaySeconds" not in readiness
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz", "a long first recovery must not restart the pod"
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


def test_a_pod_has_the_memory_its_rocksdb_cache_is_sized_for() -> None:
    """STATE_CACHE_MB is all of RocksDB's memory; docs/operations.md#state sizes the rest against this limit."""
    configmap, workers = manifests()["ConfigMap"], manifests()["StatefulSet"]
    settings = Settings.from_env(configmap["data"])
    (container,) = workers["spec"]["template"]["spec"]["containers"]
    resources = container["resources"]
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == "512Mi", "no overcommit: the cache is fixed"
    assert settings.state_cache_mb * 4 <= 512


def test_compose_gives_each_worker_its_own_state_volume() -> None:
    worker = compose()["services"]["worker"]
    settings = Settings.from_env(worker["environment"])
    assert str(settings.state_dir) in worker["volumes"], "an anonymous volume: one per worker of --scale"
    assert ":" not in str(settings.state_dir)


def test_the_operations_guide_has_every_section_deploy_and_readme_point_to() -> None:
    headings = re.findall(r"^#+ (.+?)\s*$", OPERATIONS.read_text(encoding="utf-8"), re.MULTILINE)
    anchors = {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
    texts = [path.read_text(encoding="utf-8") for path in (*DEPLOY.rglob("*.yaml"), DEPLOY / "Dockerfile", ROOT / "README.md")]
    pointed = {anchor for text in texts for anchor in re.findall(r"operations\.md#([\w-]+)", text)}
    assert {"state", "probes", "rollouts-and-disruptions"} <= pointed
    assert pointed <= anchors, f"docs/operations.md has no section for {pointed - anchors}"


# ------------------------------------------------------------------ settings documentation


def test_the_readme_settings_table_lists_every_setting_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| (.+?) \|", readme, re.MULTILINE))
    assert set(rows) == {variable for variable, _ in settings_table()}
    for variable, default in settings_table():
        if default:
            assert rows[variable] == f"`{default}`", variable
    assert "README.md#settings" in OPERATIONS.read_text(encoding="utf-8"), "docs/operations.md points to the table"
