"""Validate the Kubernetes manifests in deploy/kubernetes/, and the operator
kit around them, offline.

    python scripts/validate_k8s.py               validate deploy/kubernetes/ and its kit
    python scripts/validate_k8s.py DIR           validate the manifests in DIR instead
    python scripts/validate_k8s.py --self-test   validate deploy/kubernetes/, then break
                                                 scratch copies one way at a time and
                                                 require every one to be rejected (CI)

The usual entry point is ``bash scripts/validate-k8s.sh``, which installs the
pinned ``kubernetes-validate`` into .venv and then runs this module with
.venv's Python. Run directly, the module needs that validator installed beside
the interpreter running it, PyYAML, and the server package
(``controlplane_resolver``, for its settings table).

The operator kit lives beside the manifests: ``optional/`` (an HPA and a
NetworkPolicy), ``monitoring/`` (a ServiceMonitor and a PrometheusRule for
the Prometheus Operator, with their own kustomization.yaml) and
``../grafana/*.json`` (the dashboard). For deploy/kubernetes every part must
exist; for another DIR, each part is checked when present.

Two layers, neither needs a network or a cluster:

 1. Schema. ``kubernetes-validate --strict`` checks every manifest (all
    ``*.yaml`` of the directory and of ``optional/``, but kustomization.yaml)
    against the OpenAPI schemas of each Kubernetes version in
    ``K8S_VERSIONS`` (environment; default: the oldest supported, 1.27,
    where native gRPC probes are GA, and the newest the pinned validator
    knows). Strict mode rejects unknown fields. Anything the
    validator prints fails, warnings included: it only *warns* when it has no
    schema for a kind/apiVersion (a typo such as apps/v2 would pass).
 2. Consistency the schema cannot see (:class:`ConsistencyCheck`): duplicate
    YAML keys, ConfigMap/Secret keys that are not settings of
    ``controlplane_resolver.config.OPTIONS`` (or a secret in the ConfigMap),
    names and ports that must agree across files, file settings that must
    point into a mounted Secret, the shutdown timing, the gRPC health service
    names, and kustomization.yaml's resource list. Then the kit
    (:class:`KitCheck`), where Kubernetes has no schema: the HPA and the
    NetworkPolicy against the Deployment and the DSNs' ports; the
    ServiceMonitor against the metrics Service; the PrometheusRule's and the
    dashboard's structure, and every PromQL expression of both read
    (:func:`read_promql`) and checked against the metrics the server
    exports (``SERVER_METRICS``; tests/integration/test_operator_kit.py
    checks that table against a real server), their labels and label values.

Both layers always run; what they find is printed (``ERROR …``/``WARN …``
lines) on standard output. A crash of layer 2 on a malformed manifest prints
its traceback on standard error and counts as invalid.

Exit status: 0 valid, 1 a manifest is invalid (or --self-test found a break
that passed, or a documented variant that was rejected), 2 usage or set-up
error.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

#: The repository root (the parent of scripts/), as an absolute, unresolved path.
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
DEFAULT_TARGET = os.path.join(REPO, "deploy", "kubernetes")
PROTO = os.path.join(REPO, "protos", "controlplane", "resolver", "v1", "resolver.proto")

#: Oldest supported and newest known Kubernetes; the environment variable
#: K8S_VERSIONS (space-separated) overrides them for a one-off check.
DEFAULT_K8S_VERSIONS = "1.27.0 1.37.0"

#: Printed, on standard error, for -h/--help and usage errors (exit status 2).
USAGE = """\
Validate the Kubernetes manifests and the operator kit offline.

  bash scripts/validate-k8s.sh               validate deploy/kubernetes/ and its kit
  bash scripts/validate-k8s.sh DIR           validate the manifests in DIR instead
  bash scripts/validate-k8s.sh --self-test   validate deploy/kubernetes/, then break
                                             scratch copies one way at a time and
                                             require every one to be rejected (CI)
"""

#: A parsed YAML document. Manifests are checked, not trusted: every field
#: may be absent or of any type, so they stay untyped on purpose.
Document = Any

NAME = "controlplane-resolver"
DEPLOYMENT_FILE = "deployment.yaml"
CONFIGMAP_FILE = "configmap.yaml"
SECRET_FILE = "secret.example.yaml"
KUSTOMIZATION_FILE = "kustomization.yaml"

#: The operator kit, relative to the manifests' directory: Prometheus
#: Operator objects (their own kustomization), the optional HPA and
#: NetworkPolicy, and the Grafana dashboards (*.json).
MONITORING_DIR = "monitoring"
OPTIONAL_DIR = "optional"
DASHBOARD_DIR = os.path.join(os.pardir, "grafana")

#: Settings the Deployment depends on; RESOLVER_HEALTH_ADDR because the
#: probes use the plaintext health port (they cannot speak TLS or send a token).
REQUIRED_SETTINGS = (
    "RESOLVER_ADDR",
    "RESOLVER_HEALTH_ADDR",
    "RESOLVER_METRICS_ADDR",
    "RESOLVER_SHUTDOWN_PAUSE_MS",
    "RESOLVER_SHUTDOWN_GRACE_MS",
    "RESOLVER_AUTH_TOKENS_FILE",
)
#: Listening address setting → the name of its containerPort.
ADDRESSES = {
    "RESOLVER_ADDR": "grpc",
    "RESOLVER_HEALTH_ADDR": "health",
    "RESOLVER_METRICS_ADDR": "metrics",
}
#: Hosts that listen on every interface (the pod IP included).
WILDCARD = frozenset({"0.0.0.0", "[::]", "::", ""})
#: Settings that name a file which must come from a mounted Secret.
FILE_SETTINGS = (
    "RESOLVER_AUTH_TOKENS_FILE",
    "RESOLVER_TLS_CERT",
    "RESOLVER_TLS_KEY",
    "RESOLVER_TLS_CLIENT_CA",
)


class SetupError(Exception):
    """The environment cannot run the validation (exit status 2)."""


class LayerAbort(Exception):
    """Layer 2 cannot check anything; the message is printed on standard error."""


# ------------------------------------------------------------------ YAML


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML
    would keep the last; the API server's strict decoding rejects it)."""


def _construct_unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    """Construct ``node`` as SafeLoader does; raise ConstructorError on a key seen twice."""
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


# ------------------------------------------------------------------ inputs


def load_settings() -> dict[str, bool]:
    """{environment variable: secret?} for every option in
    ``controlplane_resolver.config.OPTIONS``, in declaration order.

    Raises SetupError when the server package cannot be imported."""
    try:
        from controlplane_resolver.config import OPTIONS
    except ImportError as exc:
        raise SetupError(
            f"validate-k8s: cannot import controlplane_resolver.config ({exc}); "
            "run `make install` to install the server into .venv"
        ) from None
    return {option.env: bool(option.secret) for option in OPTIONS}


def service_name_from_proto(path: str = PROTO) -> str:
    """The fully qualified name (``package.Service``) of the first service
    declared in the proto file at ``path``; LayerAbort if there is none."""
    with open(path, encoding="utf-8") as proto:
        text = proto.read()
    package = re.search(r"^package\s+([\w.]+)\s*;", text, re.M)
    service = re.search(r"^service\s+(\w+)", text, re.M)
    if package is None or service is None:
        raise LayerAbort(f"ERROR {path}: no package or service declaration; update validate_k8s.py")
    return f"{package.group(1)}.{service.group(1)}"


def validator_executable() -> str:
    """The kubernetes-validate command installed beside this interpreter;
    SetupError when it is missing."""
    path = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
    if not os.access(path, os.X_OK):
        raise SetupError(
            f"validate-k8s: {path} is missing: run `bash scripts/validate-k8s.sh` "
            "(it installs the pinned validator) or `make install`"
        )
    return path


def k8s_versions() -> str:
    """K8S_VERSIONS from the environment (unset or empty: the default), as given."""
    return os.environ.get("K8S_VERSIONS") or DEFAULT_K8S_VERSIONS


def yaml_files(directory: str) -> list[str]:
    """The paths matching ``directory/*.yaml`` (hidden files excluded), sorted."""
    return sorted(glob.glob(os.path.join(glob.escape(directory), "*.yaml")))


def kit_files(directory: str) -> list[str]:
    """Every file the validation reads, relative to ``directory``: its
    ``*.yaml``, those of optional/ and monitoring/, and the dashboards
    (``../grafana/*.json``); each part may be absent."""
    found = []
    for subdir, pattern in (
        ("", "*.yaml"),
        (OPTIONAL_DIR, "*.yaml"),
        (MONITORING_DIR, "*.yaml"),
        (DASHBOARD_DIR, "*.json"),
    ):
        where = glob.escape(os.path.join(directory, subdir))
        found += [
            os.path.join(subdir, os.path.basename(path))
            for path in sorted(glob.glob(os.path.join(where, pattern)))
        ]
    return found


# ------------------------------------------------------------------ layer 2


class ConsistencyCheck:
    """Layer 2 over the ``*.yaml`` files of one directory and of its kit
    subdirectories (then :class:`KitCheck` over the kit).

    :meth:`run` returns the ``ERROR file: message`` lines, in the order
    found; empty means consistent. It raises LayerAbort when the settings
    table is empty or the proto names no service, and may raise anything
    else on a manifest malformed past what the checks anticipate (the caller
    reports that as invalid).
    """

    def __init__(
        self,
        directory: str,
        settings: Mapping[str, bool],
        service_name: str,
        require_kit: bool = False,
    ) -> None:
        self.directory = directory
        self.settings = settings
        self.service_name = service_name
        #: Report a missing part of the operator kit (the repository's own
        #: deploy/ has every part; another DIR may hold the manifests alone).
        self.require_kit = require_kit
        self.errors: list[str] = []
        #: (kind, metadata.name) → (file, object), every object but the
        #: kustomizations, from the directory and its kit subdirectories.
        self.objects: dict[tuple[Any, Any], tuple[str, Document]] = {}
        #: subdirectory ("" for the manifests' own) → its kustomization.yaml.
        self.kustomizations: dict[str, Document] = {}
        # Facts of the Deployment, shared by later checks.
        self.deployment_spec: Document = {}
        self.pod_labels: Document = {}
        self.container_ports: dict[Any, Any] = {}

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"ERROR {where}: {message}")

    def run(self) -> list[str]:
        """All the checks; see the class docstring."""
        self.load()
        if self.errors:  # cannot cross-check what did not load
            return self.errors
        if not self.settings:
            raise LayerAbort(
                "ERROR controlplane_resolver.config: OPTIONS is empty; update validate_k8s.py"
            )
        self.check_deployment()
        self.check_services_and_budgets()
        self.check_int_or_percent()
        for subdir in self.kustomizations:
            self.check_kustomization(subdir)
        KitCheck(self).run()
        return self.errors

    # -------------------------------------------------------------- load

    def load(self) -> None:
        """Parse every ``*.yaml`` of the directory and of its kit
        subdirectories (duplicate keys rejected); each must hold Kubernetes
        objects, namespace-agnostic, labelled with NAME, and no (kind, name)
        may be defined twice."""
        self.load_directory("")
        for subdir in (OPTIONAL_DIR, MONITORING_DIR):
            if os.path.isdir(os.path.join(self.directory, subdir)):
                self.load_directory(subdir)
            elif self.require_kit:
                self.error(f"{subdir}/", "is missing (the operator kit, README)")

    def load_directory(self, subdir: str) -> None:
        """Load ``subdir/*.yaml`` (``""``: the directory's own files)."""
        directory = os.path.join(self.directory, subdir)
        files = sorted(f for f in os.listdir(directory) if f.endswith(".yaml"))
        for name in files:
            file = os.path.join(subdir, name) if subdir else name
            try:
                with open(os.path.join(directory, name)) as stream:
                    docs = [d for d in yaml.load_all(stream, UniqueKeyLoader) if d is not None]
            except yaml.YAMLError as exc:
                self.error(file, f"not valid YAML: {exc}")
                continue
            if not docs:
                self.error(file, "holds no object")
            for doc in docs:
                if not isinstance(doc, dict) or "kind" not in doc:
                    self.error(file, "a document is not a Kubernetes object (no kind)")
                    continue
                if name == KUSTOMIZATION_FILE:
                    self.kustomizations[subdir] = doc
                    continue
                meta = doc.get("metadata") or {}
                where = f"{file} {doc['kind']}/{meta.get('name')}"
                if "namespace" in meta:
                    self.error(
                        where, "sets metadata.namespace; the manifests are namespace-agnostic"
                    )
                if (meta.get("labels") or {}).get("app.kubernetes.io/name") != NAME:
                    self.error(where, f"lacks the label app.kubernetes.io/name: {NAME}")
                key = (doc["kind"], meta.get("name"))
                if key in self.objects:
                    self.error(where, f"also defined in {self.objects[key][0]}")
                self.objects[key] = (file, doc)

    # -------------------------------------------------------------- helpers

    def get(self, kind: str, name: Any) -> Document | None:
        """The object ``kind/name``, or None (reported) when no manifest defines it."""
        found = self.objects.get((kind, name))
        if found is None:
            self.error(kind, f"{kind}/{name} is not defined in any manifest")
            return None
        return found[1]

    def port_of(self, addr: str) -> int | None:
        """The port of host:port, or None (reported) when it is not a number."""
        try:
            return int(addr.rpartition(":")[2])
        except ValueError:
            self.error(CONFIGMAP_FILE, f"{addr!r} is not host:port")
            return None

    def selects_pods(self, where: str, selector: Document) -> None:
        """Report unless ``selector`` is non-empty and matches the Deployment's pod labels."""
        selector = selector or {}
        if not selector or any(self.pod_labels.get(k) != v for k, v in selector.items()):
            self.error(
                where,
                f"selector {selector} does not select the Deployment's pods {self.pod_labels}",
            )

    # -------------------------------------------------------------- Deployment

    def check_deployment(self) -> None:
        """The Deployment against itself, the ConfigMap, the Secrets and config.py."""
        deployment = self.get("Deployment", NAME) or {}
        spec = self.deployment_spec = deployment.get("spec", {})
        pod = spec.get("template", {})
        self.pod_labels = pod.get("metadata", {}).get("labels", {})
        pod_spec = pod.get("spec", {})
        containers = pod_spec.get("containers", [])
        container = containers[0] if containers else {}

        self.selects_pods(DEPLOYMENT_FILE, spec.get("selector", {}).get("matchLabels"))
        if self.pod_labels.get("app.kubernetes.io/name") != NAME:
            self.error(
                DEPLOYMENT_FILE, f"pod template lacks the label app.kubernetes.io/name: {NAME}"
            )

        env = self.check_configuration(container)
        addr_port = self.check_addresses(env)
        self.check_ports(container, pod, env, addr_port)
        self.check_probes(container, addr_port.get("RESOLVER_HEALTH_ADDR"))
        self.check_shutdown(pod_spec, env)
        self.check_secret_volumes(pod_spec, container, env)
        self.check_security(pod_spec, container)

    def check_configuration(self, container: Document) -> dict[Any, Any]:
        """envFrom names one ConfigMap and one Secret that exist; their key
        sets match config.py (secrets only in the Secret, all of them there);
        the settings the Deployment depends on are set. Returns the
        ConfigMap's data (the container's non-secret environment)."""
        config_maps = [
            e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e
        ]
        secret_refs = [
            e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e
        ]
        secret_settings = {k for k, secret in self.settings.items() if secret}
        env: dict[Any, Any] = {}
        for name in config_maps:
            data = (self.get("ConfigMap", name) or {}).get("data", {})
            for key, value in data.items():
                if key not in self.settings:
                    self.error(CONFIGMAP_FILE, f"{key} is not a setting of config.py (a typo?)")
                elif self.settings[key]:
                    self.error(CONFIGMAP_FILE, f"{key} is secret: it belongs in a Secret")
                env[key] = value
        for name in secret_refs:
            secret = self.get("Secret", name) or {}
            keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
            for key in sorted(keys - secret_settings):
                self.error(SECRET_FILE, f"Secret/{name} key {key} is not a secret setting")
            for key in sorted(secret_settings - keys):
                self.error(SECRET_FILE, f"Secret/{name} lacks the secret setting {key}")
        if not config_maps or not secret_refs:
            self.error(
                DEPLOYMENT_FILE, "the container must take envFrom one ConfigMap and one Secret"
            )
        for required in REQUIRED_SETTINGS:
            if required not in env:
                self.error(CONFIGMAP_FILE, f"{required} must be set (the Deployment depends on it)")
        return env

    def check_addresses(self, env: Mapping[Any, Any]) -> dict[str, int | None]:
        """Listening addresses: the kubelet (probes), the Service and
        Prometheus all connect to the pod IP, so each must listen on the
        wildcard address; and the ports must differ (with
        RESOLVER_PROCESSES=N every port is still one: the processes share the
        gRPC and health ports, and the parent serves all their metrics). A
        clash fails start-up, or worse, under SO_REUSEPORT splits one port's
        connections between two servers. Returns {address setting: its port,
        None if not a number} for the address settings that are set."""
        addr_port: dict[str, int | None] = {}
        for setting in ADDRESSES:
            if setting in env:
                if env[setting].rpartition(":")[0] not in WILDCARD:
                    self.error(
                        CONFIGMAP_FILE,
                        f"{setting} {env[setting]} must listen on 0.0.0.0 (or [::]): "
                        "the kubelet, the Service and Prometheus connect to the pod IP",
                    )
                addr_port[setting] = self.port_of(env[setting])
        if not env.get("RESOLVER_PROCESSES", "1").isdigit():
            self.error(CONFIGMAP_FILE, "RESOLVER_PROCESSES must be a whole number")
        claimed: dict[int, str] = {}
        for setting, port in addr_port.items():
            if port is None:
                continue
            if port in claimed:
                self.error(CONFIGMAP_FILE, f"{setting} uses port {port}, as {claimed[port]} does")
            claimed.setdefault(port, setting)
        return addr_port

    def check_ports(
        self,
        container: Document,
        pod: Document,
        env: Mapping[Any, Any],
        addr_port: Mapping[str, int | None],
    ) -> None:
        """Each address's port is the containerPort of its name; the
        Prometheus scrape annotation names the metrics port."""
        self.container_ports = {
            p.get("name"): p.get("containerPort") for p in container.get("ports", [])
        }
        ports = self.container_ports
        for setting, name in ADDRESSES.items():
            if addr_port.get(setting) is not None and ports.get(name) != addr_port[setting]:
                self.error(
                    DEPLOYMENT_FILE,
                    f"containerPort {name} {ports.get(name)} != {setting} {env[setting]}",
                )
        annotations = pod.get("metadata", {}).get("annotations", {})
        if annotations.get("prometheus.io/port") != str(ports.get("metrics")):
            self.error(
                DEPLOYMENT_FILE, "annotation prometheus.io/port differs from containerPort metrics"
            )

    def check_probes(self, container: Document, health_port: int | None) -> None:
        """Kubelet health probes: native gRPC, all on the health port
        (plaintext, no token, outside the call limit; a probe on the API port
        fails once TLS or mutual TLS is on there, and under overload);
        readiness on the resolver service, liveness and startup on "" (the
        whole server)."""
        expected_service = {
            "readinessProbe": self.service_name,
            "livenessProbe": "",
            "startupProbe": "",
        }
        for probe_name, service in expected_service.items():
            grpc = (container.get(probe_name) or {}).get("grpc")
            if grpc is None:
                self.error(DEPLOYMENT_FILE, f"{probe_name} must be a native gRPC probe")
                continue
            if health_port is not None and grpc.get("port") != health_port:
                self.error(
                    DEPLOYMENT_FILE,
                    f"{probe_name} probes port {grpc.get('port')}, not the health port "
                    f"{health_port} of RESOLVER_HEALTH_ADDR",
                )
            if grpc.get("service", "") != service:
                self.error(
                    DEPLOYMENT_FILE,
                    f"{probe_name} asks health for service {grpc.get('service')!r}; "
                    f"the server reports {service!r}",
                )

    def check_shutdown(self, pod_spec: Document, env: Mapping[Any, Any]) -> None:
        """The kubelet must not SIGKILL a replica still pausing or draining:
        terminationGracePeriodSeconds exceeds pause + grace."""
        try:
            drain_ms = int(env.get("RESOLVER_SHUTDOWN_PAUSE_MS", 0)) + int(
                env.get("RESOLVER_SHUTDOWN_GRACE_MS", 0)
            )
            period = pod_spec.get("terminationGracePeriodSeconds", 30)
            if not drain_ms < period * 1000:
                self.error(
                    DEPLOYMENT_FILE,
                    f"terminationGracePeriodSeconds {period}s must exceed RESOLVER_SHUTDOWN_"
                    f"PAUSE_MS + RESOLVER_SHUTDOWN_GRACE_MS ({drain_ms} ms)",
                )
        except ValueError:
            self.error(CONFIGMAP_FILE, "RESOLVER_SHUTDOWN_*_MS must be whole numbers")

    def check_secret_volumes(
        self, pod_spec: Document, container: Document, env: Mapping[Any, Any]
    ) -> None:
        """Secret volumes are whole-directory mounts (subPath never sees
        updates) of Secrets that exist; each file setting (tokens, TLS) names
        a key of a Secret mounted, as a whole directory, at the file's
        directory."""
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        mounts = container.get("volumeMounts", [])
        for mount in mounts:
            volume = volumes.get(mount["name"])
            if volume is None:
                self.error(DEPLOYMENT_FILE, f"volumeMount {mount['name']} has no volume")
            elif "secret" in volume:
                if "subPath" in mount or "subPathExpr" in mount:
                    self.error(
                        DEPLOYMENT_FILE,
                        f"Secret volume {mount['name']} is mounted with subPath: updates "
                        "(token and certificate rotation) would never reach the pod",
                    )
                self.get("Secret", volume["secret"]["secretName"])
        for setting in FILE_SETTINGS:
            path = env.get(setting, "")
            if not path:
                continue
            directory_of, _, key = path.rpartition("/")
            mount = next(
                (m for m in mounts if m.get("mountPath", "").rstrip("/") == directory_of), None
            )
            secret_name = (
                volumes.get((mount or {}).get("name"), {}).get("secret", {}).get("secretName")
            )
            if secret_name is None:
                self.error(DEPLOYMENT_FILE, f"no Secret is mounted at {directory_of} ({setting})")
                continue
            secret: Document = self.objects.get(("Secret", secret_name), (None, {}))[1]
            if key not in set(secret.get("stringData", {})) | set(secret.get("data", {})):
                self.error(
                    DEPLOYMENT_FILE,
                    f"{setting} names key {key!r}, absent from Secret/{secret_name}",
                )

    def check_security(self, pod_spec: Document, container: Document) -> None:
        """The security context the image requires (non-root user 10001, read-only root)."""
        security = container.get("securityContext", {})
        if not (
            security.get("runAsNonRoot") or pod_spec.get("securityContext", {}).get("runAsNonRoot")
        ):
            self.error(DEPLOYMENT_FILE, "runAsNonRoot must be true")
        if security.get("readOnlyRootFilesystem") is not True:
            self.error(DEPLOYMENT_FILE, "readOnlyRootFilesystem must be true")
        if "ALL" not in security.get("capabilities", {}).get("drop", []):
            self.error(DEPLOYMENT_FILE, "capabilities must drop ALL")

    # -------------------------------------------------------------- Service, PDB

    def check_services_and_budgets(self) -> None:
        """The resolver's Service is headless; every Service and
        PodDisruptionBudget selects the Deployment's pods; Service target
        ports are container ports; a PodDisruptionBudget exists."""
        grpc_service = self.get("Service", NAME) or {}
        if grpc_service.get("spec", {}).get("clusterIP") != "None":
            self.error(
                "service.yaml",
                f"Service/{NAME} must be headless (clusterIP: None) for client-side round_robin",
            )
        ports = self.container_ports
        for (kind, name), (file, obj) in self.objects.items():
            if kind == "Service":
                self.selects_pods(f"{file} Service/{name}", obj["spec"].get("selector"))
                for p in obj["spec"].get("ports", []):
                    target = p.get("targetPort", p.get("port"))
                    if target not in ports and target not in ports.values():
                        self.error(
                            f"{file} Service/{name}", f"targetPort {target} is no container port"
                        )
            if kind == "PodDisruptionBudget":
                self.selects_pods(
                    f"{file} PodDisruptionBudget/{name}",
                    obj["spec"].get("selector", {}).get("matchLabels"),
                )
        if not any(kind == "PodDisruptionBudget" for kind, _ in self.objects):
            self.error("pdb.yaml", "no PodDisruptionBudget")

    def check_int_or_percent(self) -> None:
        """int-or-string fields: the schema accepts any string; the API wants "N%"."""
        fields: list[tuple[str, str, Any]] = [
            ("pdb.yaml", f"PodDisruptionBudget {field}", obj["spec"].get(field))
            for (kind, _), (_, obj) in self.objects.items()
            if kind == "PodDisruptionBudget"
            for field in ("minAvailable", "maxUnavailable")
        ]
        rolling_update = self.deployment_spec.get("strategy", {}).get("rollingUpdate", {})
        fields += [
            (DEPLOYMENT_FILE, f"rollingUpdate {field}", rolling_update.get(field))
            for field in ("maxSurge", "maxUnavailable")
        ]
        for file, field, value in fields:
            if value is not None and not (
                isinstance(value, int) or re.fullmatch(r"\d+%", str(value))
            ):
                self.error(
                    file, f'{field} is {value!r}: use a whole number or a percentage like "25%"'
                )

    # -------------------------------------------------------------- kustomization

    def check_kustomization(self, subdir: str) -> None:
        """A kustomization.yaml (the manifests', monitoring/'s) lists every
        manifest beside it but the placeholder Secret, and nothing else."""
        where = os.path.join(subdir, KUSTOMIZATION_FILE) if subdir else KUSTOMIZATION_FILE
        listed = set(self.kustomizations[subdir].get("resources", []))
        directory = os.path.join(self.directory, subdir)
        expected = {f for f in os.listdir(directory) if f.endswith(".yaml")} - {
            KUSTOMIZATION_FILE,
            SECRET_FILE,
        }
        if SECRET_FILE in listed:
            self.error(where, f"must not list {SECRET_FILE} (placeholders)")
        for missing in sorted(expected - listed):
            self.error(where, f"does not list {missing}")
        for extra in sorted(listed - expected - {SECRET_FILE}):
            self.error(where, f"lists {extra}, which does not exist")


# ------------------------------------------------------------------ metrics and PromQL


def _words(text: str) -> frozenset[str]:
    """The whitespace-separated words of ``text``."""
    return frozenset(text.split())


_GRPC_LABELS = frozenset({"grpc_type", "grpc_service", "grpc_method"})
_CACHE_COUNTERS = _words(
    "hits negative_hits misses stale_serves joins loads load_errors refreshes "
    "refresh_failures evictions discarded_fills abandoned"
)

#: Every series the server exports (sample names, as PromQL sees them) and
#: its labels: docs/operations.md "Metrics". tests/integration/
#: test_operator_kit.py checks this table against a real server's /metrics.
SERVER_METRICS: dict[str, frozenset[str]] = {
    "grpc_server_started_total": _GRPC_LABELS,
    "grpc_server_handled_total": _GRPC_LABELS | {"grpc_code"},
    "grpc_server_handling_seconds_bucket": _GRPC_LABELS | {"le"},
    "grpc_server_handling_seconds_count": _GRPC_LABELS,
    "grpc_server_handling_seconds_sum": _GRPC_LABELS,
    "resolver_ready": frozenset(),
    **{f"resolver_cache_{name}_total": frozenset({"slot"}) for name in _CACHE_COUNTERS},
    "resolver_cache_invalidations_total": frozenset({"cause"}),
    "resolver_pool_connections": frozenset({"database"}),
    "resolver_pool_requests_waiting": frozenset({"database"}),
    "resolver_pool_errors_total": frozenset({"database"}),
    "resolver_db_circuit_open": frozenset({"database"}),
    "resolver_db_circuit_opened_total": frozenset({"database"}),
    "resolver_db_refused_total": frozenset({"database", "cause"}),
    "resolver_db_reaped_total": frozenset({"database"}),
    "resolver_run_read_batches_total": frozenset({"database"}),
    "resolver_run_read_keys_total": frozenset({"database"}),
    "resolver_run_read_inline_batches_total": frozenset({"database"}),
    "resolver_split_mode": frozenset(),
    "resolver_sentinel_verdict": frozenset({"verdict"}),
    "resolver_listener_listening": frozenset(),
    "resolver_listener_notifications_total": frozenset(),
    "resolver_listener_sync_markers_total": frozenset(),
    "resolver_watch_streams": frozenset(),
    "resolver_watch_streams_started_total": frozenset(),
    "resolver_watch_invalidations_total": frozenset(),
    "resolver_watch_events_sent_total": frozenset(),
    "resolver_watch_streams_dropped_total": frozenset({"reason"}),
    "resolver_worker_threads": frozenset(),
    "resolver_worker_wakes_total": frozenset(),
    "resolver_worker_stall_starts_total": frozenset(),
}
#: Served by the supervisor of ``serve --processes N`` only, beside every
#: process's samples (which then carry the label ``process``).
SUPERVISOR_METRICS: dict[str, frozenset[str]] = {"resolver_process_up": frozenset({"process"})}
#: Series from elsewhere that the rules may use: ``up`` is Prometheus' own,
#: one per target; the other comes from kube-state-metrics, which ships with
#: every Prometheus Operator installation (kube-prometheus).
EXTERNAL_METRICS: dict[str, frozenset[str]] = {
    "up": frozenset(),
    "kube_pod_container_status_restarts_total": frozenset({"namespace", "pod", "container", "uid"}),
}
#: Labels the scrape adds to every sample: the Prometheus Operator's target
#: labels, and ``process`` under RESOLVER_PROCESSES=N.
TARGET_LABELS = frozenset(
    {"namespace", "pod", "service", "endpoint", "job", "instance", "container", "process"}
)
KNOWN_METRICS: dict[str, frozenset[str]] = {
    **SERVER_METRICS,
    **SUPERVISOR_METRICS,
    **EXTERNAL_METRICS,
}
#: Labels whose values are a closed set (a typo there matches nothing).
#: grpc_service is checked against the proto's service name.
KNOWN_LABEL_VALUES: dict[str, frozenset[str]] = {
    "grpc_code": _words(
        "OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND ALREADY_EXISTS "
        "PERMISSION_DENIED RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE "
        "UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS UNAUTHENTICATED"
    ),
    "grpc_type": frozenset({"unary", "client_stream", "server_stream", "bidi_stream"}),
}

PROMQL_AGGREGATIONS = _words(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile "
    "limitk limit_ratio"
)
#: Functions whose argument is a range vector (``[5m]``).
PROMQL_RANGE_FUNCTIONS = _words(
    "rate irate increase delta idelta deriv resets changes predict_linear "
    "holt_winters double_exponential_smoothing avg_over_time min_over_time "
    "max_over_time sum_over_time count_over_time quantile_over_time stddev_over_time "
    "stdvar_over_time last_over_time present_over_time absent_over_time mad_over_time"
)
PROMQL_FUNCTIONS = PROMQL_RANGE_FUNCTIONS | _words(
    "abs absent acos acosh asin asinh atan atanh ceil clamp clamp_max clamp_min cos "
    "cosh day_of_month day_of_week day_of_year days_in_month deg exp floor "
    "histogram_avg histogram_count histogram_fraction histogram_quantile "
    "histogram_stddev histogram_stdvar histogram_sum hour info label_join "
    "label_replace ln log10 log2 minute month pi rad round scalar sgn sin sinh sort "
    "sort_by_label sort_by_label_desc sort_desc sqrt tan tanh time timestamp vector "
    "year start end"
)
_BINARY_KEYWORDS = frozenset({"and", "or", "unless", "atan2"})
_GROUPING_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_BINARY_OPERATORS = frozenset({"+", "-", "*", "/", "%", "^", "==", "!=", ">", "<", ">=", "<="})
_PROMQL_TOKEN = re.compile(
    r"""
      (?P<space>\s+|\#[^\n]*)
    | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
    | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)(?![\w.])
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_:]*)
    | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^=<>,(){}\[\]:@])
    """,
    re.X,
)
#: Grafana's interval variables, which stand for a duration inside ``[…]``.
_GRAFANA_INTERVALS = re.compile(
    r"\$__(?:rate_interval|interval|range)\b|\$\{__(?:rate_interval|interval|range)\}"
)
#: A dashboard variable reference: $name, ${name}, ${name:format}, [[name]].
_GRAFANA_VARIABLE = re.compile(
    r"\$([A-Za-z_]\w*)|\$\{([A-Za-z_]\w*)(?::\w+)?\}|\[\[([A-Za-z_]\w*)\]\]"
)
#: Prometheus' duration format (rule ``for:``, group ``interval:``, scrape intervals).
PROM_DURATION = re.compile(r"0|(?=\d)(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?")


@dataclass
class Selector:
    """One vector selector: its metric name (None when only ``__name__``
    could say, with a regex) and its matchers ``{label: (operator, value)}``."""

    metric: str | None
    matchers: dict[str, tuple[str, str]]


@dataclass
class PromQL:
    """What :func:`read_promql` found in one expression."""

    selectors: list[Selector]
    #: Labels named in by / on / group_left / group_right clauses.
    grouping: set[str]
    #: Labels named in ignoring / without clauses.
    dropped: set[str]
    aggregated: bool
    errors: list[str]
    #: An aggregation names the labels it drops (``without``).
    without: bool = False

    def result_labels(self) -> frozenset[str] | None:
        """The labels the result can carry, approximately: an aggregation
        keeps its by/on labels; without one, the selected series keep
        theirs and the target labels. None when unknown (``without``)."""
        if self.without:
            return None
        if self.aggregated:
            return frozenset(self.grouping)
        labels: set[str] = set(TARGET_LABELS) | self.grouping
        for selector in self.selectors:
            labels |= KNOWN_METRICS.get(selector.metric or "", frozenset())
        return frozenset(labels)


@dataclass
class _Frame:
    """An open ``(`` of a PromQL expression."""

    function: str | None  # the function or aggregation it calls, if any
    first_selector: int  # len(selectors) when it opened
    has_range: bool = False


def _string_value(token: str) -> str:
    body = token[1:-1]
    if token[0] == "`":
        return body
    return re.sub(r"\\(.)", r"\1", body)


def _tokens(text: str) -> tuple[list[tuple[str, str]], str | None]:
    """The significant tokens of ``text``, and an error where lexing stopped."""
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _PROMQL_TOKEN.match(text, position)
        if match is None:
            return tokens, f"unexpected {text[position]!r} at {text[position:][:20]!r}"
        position = match.end()
        if match.lastgroup != "space":
            tokens.append((match.lastgroup or "", match.group()))
    return tokens, None


class _Reader:
    """The state of :func:`read_promql` over one expression's tokens."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.found = PromQL([], set(), set(), False, [])
        self.stack: list[_Frame] = []
        self.ended = False  # the previous token ended an operand

    def token(self, i: int) -> tuple[str, str]:
        return self.tokens[i] if i < len(self.tokens) else ("end", "")

    def fail(self, message: str) -> int:
        """Record ``message``; the index that stops the reading."""
        self.found.errors.append(message)
        return len(self.tokens) + 1

    def label_list(self, i: int, into: set[str]) -> int:
        """Read ``(a, b, …)`` at ``i`` into ``into``; the index after it."""
        if self.token(i)[1] != "(":
            return self.fail(f"expected ( after {self.token(i - 1)[1]}")
        i += 1
        while self.token(i)[1] != ")":
            kind, value = self.token(i)
            if kind == "ident":
                into.add(value)
            elif value != ",":
                return self.fail(f"unexpected {value or 'end'!r} in a label list")
            i += 1
        return i + 1

    def matchers(self, i: int, metric: str | None) -> int:
        """Read ``{label op "value", …}`` at ``i``; the index after it."""
        selector = Selector(metric, {})
        i += 1
        while self.token(i)[1] != "}":
            (kind, label), (_, op), (value_kind, value) = (
                self.token(i),
                self.token(i + 1),
                self.token(i + 2),
            )
            if kind != "ident" or op not in ("=", "!=", "=~", "!~") or value_kind != "string":
                return self.fail(f"malformed label matcher at {label or 'end'!r}")
            selector.matchers[label] = (op, _string_value(value))
            i += 3
            if self.token(i)[1] == ",":
                i += 1
            elif self.token(i)[1] != "}":
                return self.fail(f"expected , or }} after the matcher of {label}")
        name = selector.matchers.get("__name__")
        if selector.metric is None and name is not None and name[0] == "=":
            selector.metric = name[1]
        if selector.metric is None and not selector.matchers:
            return self.fail("empty selector {}")
        self.found.selectors.append(selector)
        return i + 1

    def grouping(self, i: int, keyword: str) -> int:
        """Read the label list of ``keyword`` (by, without, on, …) at ``i``."""
        labels: set[str] = set()
        if keyword in ("group_left", "group_right") and self.token(i)[1] != "(":
            return i
        i = self.label_list(i, labels)
        if keyword in ("without", "ignoring"):
            self.found.dropped |= labels
        else:
            self.found.grouping |= labels
        if keyword in ("by", "without"):
            self.found.aggregated = True
            self.found.without |= keyword == "without"
            # Every aggregation between the buckets and histogram_quantile
            # must keep le, or the quantile has nothing to interpolate.
            inside = any(frame.function == "histogram_quantile" for frame in self.stack)
            if inside and ("le" in labels) == (keyword == "without"):
                self.fail(f"histogram_quantile() needs le kept by the {keyword} (…) inside it")
        return i

    def close(self, i: int) -> int:
        if not self.stack:
            return self.fail("unbalanced )")
        frame = self.stack.pop()
        if not self.ended and self.token(i - 1)[1] != "(":
            return self.fail(f"operand missing before the ) of {frame.function or '( )'}")
        if frame.function in PROMQL_RANGE_FUNCTIONS and not frame.has_range:
            self.fail(f"{frame.function}() needs a range vector, e.g. [5m]")
        if frame.function == "histogram_quantile" and not any(
            (s.metric or "").endswith("_bucket")
            for s in self.found.selectors[frame.first_selector :]
        ):
            self.fail("histogram_quantile() of no _bucket series")
        self.ended = True
        return i + 1

    def range(self, i: int) -> int:
        """``[5m]``, or a subquery ``[5m:1m]`` / ``[5m:]``, at ``i``."""
        j = i + 1
        if self.token(j)[0] != "duration":
            return self.fail(f"expected a duration in [ ], got {self.token(j)[1] or 'end'!r}")
        j += 1
        if self.token(j)[1] == ":":
            j += 2 if self.token(j + 1)[0] == "duration" else 1
        if self.token(j)[1] != "]":
            return self.fail("unclosed [")
        if self.stack:
            self.stack[-1].has_range = True
        self.ended = True
        return j + 1

    def step(self, i: int) -> int:
        """Read the construct starting at token ``i``; the index after it."""
        kind, value = self.tokens[i]
        word = value.lower() if kind == "ident" else ""
        following = self.token(i + 1)[1]
        keyword = word in _BINARY_KEYWORDS | _GROUPING_KEYWORDS | {"bool", "offset"}
        starts_operand = kind in ("string", "number", "ident") or value in ("(", "{")
        if starts_operand and not keyword and self.ended:
            return self.fail(f"missing operator before {value!r}")
        if word in _GROUPING_KEYWORDS:
            return self.grouping(i + 1, word)
        if word == "offset":  # offset 5m, offset -5m
            return i + (2 if self.token(i + 1)[0] == "duration" else 3)
        if word == "bool":
            return i + 1
        if word in _BINARY_KEYWORDS or value in _BINARY_OPERATORS:
            if not self.ended and value not in ("+", "-"):
                return self.fail(f"{value} has no left operand")
            self.ended = False
            return i + 1
        if word in PROMQL_AGGREGATIONS and following.lower() in ("by", "without"):
            j = self.grouping(i + 2, following.lower())
            if self.token(j)[1] != "(":
                return self.fail(f"{value} {following} (…) must be followed by (…)")
            self.found.aggregated = True
            self.stack.append(_Frame(word, len(self.found.selectors)))
            return j + 1
        if kind == "ident" and following == "(":
            if word in PROMQL_AGGREGATIONS:
                self.found.aggregated = True
            elif value not in PROMQL_FUNCTIONS:
                self.fail(f"unknown function {value}()")
            self.stack.append(_Frame(word, len(self.found.selectors)))
            self.ended = False
            return i + 2
        if word in ("inf", "nan") or kind in ("number", "string"):
            self.ended = True
            return i + 1
        if kind == "ident":
            self.ended = True
            if following == "{":
                return self.matchers(i + 1, value)
            self.found.selectors.append(Selector(value, {}))
            return i + 1
        if value == "{":
            self.ended = True
            return self.matchers(i, None)
        if value == "[":
            return self.range(i)
        if value == "(":
            self.stack.append(_Frame(None, len(self.found.selectors)))
            self.ended = False
            return i + 1
        if value == ")":
            return self.close(i)
        if value in (",", "@"):
            self.ended = False
            return i + 1
        return self.fail(f"unexpected {value!r}")

    def read(self) -> PromQL:
        i = 0
        while i < len(self.tokens):
            i = self.step(i)
        if i > len(self.tokens):  # stopped by an error
            return self.found
        if self.stack:
            self.fail("unbalanced (: missing )")
        elif not self.ended:
            self.fail("the expression ends with an operator")
        return self.found


def read_promql(expr: str) -> PromQL:
    """Read a PromQL expression without evaluating it: its syntax (tokens,
    brackets, an operator between two operands, known functions, a range
    vector where a function needs one, ``le`` kept under
    histogram_quantile), its selectors and the labels of its grouping
    clauses. Grafana's interval variables stand for ``5m``; other dashboard
    variables may appear inside strings only. Not a full parser: it accepts
    some invalid expressions (types are not checked), and rejects none of
    the valid forms the kit uses."""
    tokens, error = _tokens(_GRAFANA_INTERVALS.sub("5m", expr))
    if error is not None:
        return PromQL([], set(), set(), False, [error])
    if not tokens:
        return PromQL([], set(), set(), False, ["empty expression"])
    return _Reader(tokens).read()


# ------------------------------------------------------------------ the operator kit

#: Fields of the Prometheus Operator's CRDs (monitoring.coreos.com/v1) that
#: the kit may use; the API server prunes (or, strict, rejects) the others.
RULE_GROUP_FIELDS = frozenset(
    {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset", "labels"}
)
RULE_FIELDS = frozenset(
    {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
)
SERVICE_MONITOR_FIELDS = frozenset(
    {
        "attachMetadata",
        "bodySizeLimit",
        "endpoints",
        "fallbackScrapeProtocol",
        "jobLabel",
        "keepDroppedTargets",
        "labelLimit",
        "labelNameLengthLimit",
        "labelValueLengthLimit",
        "namespaceSelector",
        "nativeHistogramBucketLimit",
        "nativeHistogramMinBucketFactor",
        "podTargetLabels",
        "sampleLimit",
        "scrapeClass",
        "scrapeClassicHistograms",
        "scrapeProtocols",
        "selector",
        "selectorMechanism",
        "serviceDiscoveryRole",
        "targetLabels",
        "targetLimit",
    }
)
ENDPOINT_FIELDS = frozenset(
    {
        "authorization",
        "basicAuth",
        "bearerTokenFile",
        "bearerTokenSecret",
        "enableHttp2",
        "filterRunning",
        "followRedirects",
        "honorLabels",
        "honorTimestamps",
        "interval",
        "metricRelabelings",
        "noProxy",
        "oauth2",
        "params",
        "path",
        "port",
        "proxyConnectHeader",
        "proxyFromEnvironment",
        "proxyUrl",
        "relabelings",
        "scheme",
        "scrapeTimeout",
        "targetPort",
        "tlsConfig",
        "trackTimestampsStaleness",
    }
)
MONITORING_API = "monitoring.coreos.com/v1"
SEVERITIES = ("critical", "warning", "info")
#: Words a runbook-style description needs at least (a cause and a fix).
MIN_DESCRIPTION_WORDS = 25
GRAFANA_PANEL_TYPES = _words(
    "row timeseries stat gauge bargauge table state-timeline status-history heatmap "
    "histogram piechart barchart text logs"
)
#: Variables Grafana defines itself.
GRAFANA_BUILTIN_VARIABLES = frozenset(
    {"__interval", "__interval_ms", "__rate_interval", "__range", "__range_s", "__range_ms"}
)
_TEMPLATE_LABEL = re.compile(r"\$labels\.(\w+)")
#: A metric of the server named in prose (a description, a panel's help).
_MENTIONED_METRIC = re.compile(r"(?<![\w.])(?:resolver|grpc_server)_[a-z_]+[a-z]")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def prometheus_seconds(duration: str) -> float:
    """Seconds of a Prometheus duration already matched by PROM_DURATION."""
    units = {"y": 31536000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|[ywdhms])", duration))


def _unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object_pairs_hook: refuse a key given twice (Grafana keeps the last)."""
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"duplicate key {duplicates[0]!r}")
    return dict(pairs)


class KitCheck:
    """Layer 2 over the operator kit, once the manifests have loaded: the
    optional HPA and NetworkPolicy against the Deployment and the Secret;
    the ServiceMonitor against the metrics Service; the PrometheusRule and
    the Grafana dashboards' structure and PromQL (syntax, metric names,
    labels, label values, the labels their annotations and legends use)."""

    def __init__(self, core: ConsistencyCheck) -> None:
        self.core = core
        self.error = core.error
        #: job label values the ServiceMonitor gives its targets.
        self.jobs: set[str] = set()
        #: Names recorded by recording rules: known, with any labels.
        self.recorded: set[str] = set()
        #: The current dashboard's data-source variables.
        self.sources: set[str] = set()

    def objects(self, kind: str) -> list[tuple[str, Document]]:
        """(where, object) for every loaded object of ``kind``."""
        return [
            (f"{file} {kind}/{name}", obj)
            for (k, name), (file, obj) in self.core.objects.items()
            if k == kind
        ]

    def run(self) -> None:
        for where, obj in self.objects("HorizontalPodAutoscaler"):
            self.check_autoscaler(where, obj)
        for where, obj in self.objects("NetworkPolicy"):
            self.check_network_policy(where, obj)
        for kind in ("ServiceMonitor", "PrometheusRule"):
            for where, obj in self.objects(kind):
                if obj.get("apiVersion") != MONITORING_API:
                    self.error(where, f"apiVersion must be {MONITORING_API}")
        for where, obj in self.objects("ServiceMonitor"):
            self.check_service_monitor(where, obj)
        monitoring = os.path.join(self.core.directory, MONITORING_DIR)
        if os.path.isdir(monitoring):
            if not self.objects("ServiceMonitor"):
                self.error(f"{MONITORING_DIR}/", "holds no ServiceMonitor")
            if not self.objects("PrometheusRule"):
                self.error(f"{MONITORING_DIR}/", "holds no PrometheusRule")
        for where, obj in self.objects("PrometheusRule"):
            self.check_rules(where, obj)
        dashboards = os.path.normpath(os.path.join(self.core.directory, DASHBOARD_DIR))
        files = sorted(glob.glob(os.path.join(glob.escape(dashboards), "*.json")))
        if self.core.require_kit and not files:
            self.error(f"{DASHBOARD_DIR}/", "holds no Grafana dashboard (*.json)")
        for path in files:
            self.check_dashboard(os.path.join(DASHBOARD_DIR, os.path.basename(path)), path)

    # -------------------------------------------------------------- optional/

    def container(self) -> Document:
        """The Deployment's first container (the resolver)."""
        containers = self.core.deployment_spec.get("template", {}).get("spec", {})
        return (containers.get("containers") or [{}])[0]

    def check_autoscaler(self, where: str, hpa: Document) -> None:
        """It scales the Deployment, never below 2 replicas (the PDB lets one
        go), and on resources the container requests (Utilization is a share
        of the request)."""
        spec = hpa.get("spec", {})
        target = spec.get("scaleTargetRef", {})
        if (target.get("apiVersion"), target.get("kind"), target.get("name")) != (
            "apps/v1",
            "Deployment",
            NAME,
        ):
            self.error(where, f"scaleTargetRef must be apps/v1 Deployment {NAME}, not {target}")
        low, high = spec.get("minReplicas", 1), spec.get("maxReplicas", 0)
        if low < 2:
            self.error(where, "minReplicas must be at least 2: the PodDisruptionBudget lets one go")
        if high < low:
            self.error(where, f"maxReplicas {high} is below minReplicas {low}")
        requests = self.container().get("resources", {}).get("requests", {})
        for metric in spec.get("metrics", []):
            resource = metric.get("resource") or metric.get("containerResource") or {}
            kind = resource.get("target", {}).get("type")
            if kind == "Utilization" and resource.get("name") not in requests:
                self.error(
                    where,
                    f"{resource.get('name')} Utilization needs the container to request "
                    f"{resource.get('name')} (deployment.yaml resources.requests)",
                )

    def check_network_policy(self, where: str, policy: Document) -> None:
        """It selects the Deployment's pods; admits the gRPC and metrics
        ports (named or numbered container ports, nothing else); lets DNS
        out, and every port of the DSNs in the Secret's example."""
        spec = policy.get("spec", {})
        self.core.selects_pods(where, spec.get("podSelector", {}).get("matchLabels"))
        if set(spec.get("policyTypes", [])) != {"Ingress", "Egress"}:
            self.error(where, "policyTypes must be Ingress and Egress")
        ports = self.core.container_ports
        admitted: set[Any] = set()
        for rule in spec.get("ingress", []):
            for port in rule.get("ports", []):
                number = ports.get(port.get("port"), port.get("port"))
                if number not in ports.values():
                    self.error(where, f"ingress port {port.get('port')} is no container port")
                admitted.add(number)
            if not rule.get("ports"):
                admitted |= set(ports.values())
        for name in ("grpc", "metrics"):
            if ports.get(name) not in admitted:
                self.error(where, f"no ingress rule admits the {name} port ({ports.get(name)})")
        egress = spec.get("egress", [])

        def lets_out(port: int, protocol: str) -> bool:
            return any(
                not rule.get("ports")
                or any(
                    p.get("port") in (port, None) and p.get("protocol", "TCP") == protocol
                    for p in rule["ports"]
                )
                for rule in egress
            )

        for protocol in ("UDP", "TCP"):
            if not lets_out(53, protocol):
                self.error(where, f"egress must admit DNS (53/{protocol})")
        for port in sorted(self.database_ports()):
            if not lets_out(port, "TCP"):
                self.error(where, f"egress does not admit PostgreSQL port {port} (the DSNs')")

    def database_ports(self) -> set[int]:
        """The ports of the DSNs in the example database Secret (5432 when
        a DSN names none)."""
        found: set[int] = set()
        for (kind, _), (_, obj) in self.core.objects.items():
            if kind != "Secret":
                continue
            for key, value in (obj.get("stringData") or {}).items():
                if value and key.endswith(("_DATABASE_URL", "_REPLICA_URL")):
                    found.add(urllib.parse.urlsplit(value).port or 5432)
        return found

    # -------------------------------------------------------------- monitoring/

    def check_service_monitor(self, where: str, monitor: Document) -> None:
        """It selects Services of the manifests that expose each endpoint's
        port, and that port leads to the metrics container port; it scrapes
        /metrics over http. The selected Services' names are the job labels
        the rules may match."""
        spec = monitor.get("spec", {})
        for field in sorted(set(spec) - SERVICE_MONITOR_FIELDS):
            self.error(where, f"spec.{field} is not a ServiceMonitor field")
        selector = spec.get("selector", {}).get("matchLabels") or {}
        services = [
            (name, obj)
            for (kind, name), (_, obj) in self.core.objects.items()
            if kind == "Service"
            and selector
            and all(
                ((obj.get("metadata") or {}).get("labels") or {}).get(k) == v
                for k, v in selector.items()
            )
        ]
        if not services:
            self.error(where, f"selector {selector} selects no Service of the manifests")
        if not spec.get("jobLabel"):
            self.jobs |= {name for name, _ in services}
        metrics_port = self.core.container_ports.get("metrics")
        endpoints = spec.get("endpoints") or []
        if not endpoints:
            self.error(where, "has no endpoints")
        for endpoint in endpoints:
            for field in sorted(set(endpoint) - ENDPOINT_FIELDS):
                self.error(where, f"endpoints[].{field} is not a ServiceMonitor endpoint field")
            for name, service in services:
                port = next(
                    (
                        p
                        for p in service["spec"].get("ports", [])
                        if p.get("name") == endpoint.get("port")
                    ),
                    None,
                )
                if port is None:
                    self.error(where, f"Service/{name} has no port named {endpoint.get('port')!r}")
                    continue
                target = port.get("targetPort", port.get("port"))
                if self.core.container_ports.get(target, target) != metrics_port:
                    self.error(
                        where,
                        f"Service/{name} port {endpoint.get('port')} leads to {target}, "
                        f"not the metrics port {metrics_port}",
                    )
            if endpoint.get("path", "/metrics") != "/metrics":
                self.error(where, "the server serves /metrics only")
            if endpoint.get("scheme", "http") != "http":
                self.error(where, "the metrics endpoint speaks plain http")
            durations = {}
            for field in ("interval", "scrapeTimeout"):
                value = endpoint.get(field)
                if value is not None:
                    if not PROM_DURATION.fullmatch(str(value)) or not value:
                        self.error(where, f"{field} {value!r} is not a duration like 30s")
                    else:
                        durations[field] = prometheus_seconds(value)
            if durations.get("scrapeTimeout", 0) > durations.get("interval", float("inf")):
                self.error(where, "scrapeTimeout must not exceed interval")

    def check_rules(self, where: str, rule_object: Document) -> None:
        """Groups and rules have the CRD's shape; every alert has a `for`,
        a severity, a summary and a runbook-style description; every
        expression reads (see :meth:`check_expression`)."""
        spec = rule_object.get("spec", {})
        for field in sorted(set(spec) - {"groups"}):
            self.error(where, f"spec.{field} is not a PrometheusRule field")
        groups = spec.get("groups") or []
        if not groups:
            self.error(where, "has no rule groups")
        names: set[str] = set()
        alerts: set[str] = set()
        self.recorded |= {
            rule["record"]
            for group in groups
            for rule in group.get("rules") or []
            if "record" in rule
        }
        for group in groups:
            name = group.get("name")
            if not name or name in names:
                self.error(where, f"group name {name!r} is empty or used twice")
            names.add(name)
            for field in sorted(set(group) - RULE_GROUP_FIELDS):
                self.error(where, f"group {name}: {field} is not a rule group field")
            if "interval" in group and not PROM_DURATION.fullmatch(str(group["interval"])):
                self.error(where, f"group {name}: interval {group['interval']!r} is no duration")
            if not group.get("rules"):
                self.error(where, f"group {name} has no rules")
            for rule in group.get("rules") or []:
                self.check_rule(where, rule, alerts)

    def check_rule(self, where: str, rule: Document, alerts: set[str]) -> None:
        name = rule.get("alert") or rule.get("record")
        at = f"{where} {'alert' if 'alert' in rule else 'record'} {name}"
        for field in sorted(set(rule) - RULE_FIELDS):
            self.error(at, f"{field} is not a rule field")
        if ("alert" in rule) == ("record" in rule):
            self.error(at, "a rule has exactly one of alert and record")
            return
        expr = rule.get("expr")
        if not isinstance(expr, str) or not expr.strip():
            self.error(at, "expr must be a non-empty string")
            return
        promql = self.check_expression(at, expr)
        if "record" in rule:
            if not re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", str(name)):
                self.error(at, "record must be a metric name")
            return
        if not re.fullmatch(r"[A-Z][A-Za-z0-9]+", str(name)):
            self.error(at, "alert names are CamelCase")
        if name in alerts:
            self.error(at, "alert defined twice")
        alerts.add(name)
        for field in ("for", "keep_firing_for"):
            value = rule.get(field)
            if (value is not None or field == "for") and not (
                isinstance(value, str) and value and PROM_DURATION.fullmatch(value)
            ):
                self.error(at, f"{field} must be a duration like 5m (got {value!r})")
        labels = rule.get("labels") or {}
        annotations = rule.get("annotations") or {}
        for kind, values in (("label", labels), ("annotation", annotations)):
            for key, value in values.items():
                if not isinstance(value, str):
                    self.error(at, f"{kind} {key} must be a string, not {value!r}")
        if labels.get("severity") not in SEVERITIES:
            self.error(at, f"labels.severity must be one of {', '.join(SEVERITIES)}")
        for key in ("summary", "description"):
            if not isinstance(annotations.get(key), str) or not annotations[key].strip():
                self.error(at, f"annotations.{key} is required")
        description = str(annotations.get("description", ""))
        if len(description.split()) < MIN_DESCRIPTION_WORDS:
            self.error(at, "annotations.description must say the cause and the fix (runbook)")
        result = promql.result_labels()
        for key, text in annotations.items():
            text = str(text)
            self.check_mentions(f"{at} annotations.{key}", text)
            if text.count("{{") != text.count("}}"):
                self.error(at, f"annotations.{key}: unbalanced {{{{ }}}}")
            for label in sorted(set(_TEMPLATE_LABEL.findall(text))):
                if result is not None and label not in result:
                    self.error(
                        at,
                        f"annotations.{key} uses $labels.{label}, which the expression's "
                        f"result does not carry ({', '.join(sorted(result)) or 'no labels'})",
                    )

    def check_mentions(self, where: str, text: str) -> None:
        """Metrics named in prose exist too (a histogram by its base name)."""
        for name in sorted(set(_MENTIONED_METRIC.findall(text))):
            if not any(n in KNOWN_METRICS for n in (name, f"{name}_bucket", f"{name}_total")):
                self.error(where, f"the text names {name}, which the server does not export")

    # -------------------------------------------------------------- PromQL

    def check_expression(self, where: str, expr: str, variables: set[str] | None = None) -> PromQL:
        """Report what :func:`read_promql` finds wrong, then: every metric is
        exported by the server (or one of EXTERNAL_METRICS); every label
        matched or grouped on belongs to a metric of the expression or the
        target; closed-set label values are spelled right; grpc_server_*
        series are filtered to the resolver's service (other gRPC servers
        export the same names); job and container values name this kit's;
        dashboard variables are defined (``variables``; None: none allowed)."""
        promql = read_promql(expr)
        for problem in promql.errors:
            self.error(where, f"PromQL: {problem}")
        names = set(_GRAFANA_VARIABLE.findall(_GRAFANA_INTERVALS.sub("", expr)))
        for groups in names:
            variable = next(v for v in groups if v)
            if variables is None or (
                variable not in variables and variable not in GRAFANA_BUILTIN_VARIABLES
            ):
                self.error(where, f"${variable} is not a variable of the dashboard")
        labels_of_all: set[str] = set(TARGET_LABELS)
        for selector in promql.selectors:
            metric = selector.metric
            if metric is None:
                continue
            if metric in self.recorded:
                labels_of_all |= set(selector.matchers)
                continue
            if metric not in KNOWN_METRICS:
                self.error(where, f"unknown metric {metric}: the server does not export it")
                continue
            labels = KNOWN_METRICS[metric] | TARGET_LABELS
            labels_of_all |= labels
            for label, (op, value) in selector.matchers.items():
                if label != "__name__" and label not in labels:
                    self.error(where, f"{metric} has no label {label}")
                self.check_label_value(where, metric, label, op, value)
            if metric.startswith("grpc_server_") and selector.matchers.get("grpc_service") != (
                "=",
                self.core.service_name,
            ):
                self.error(
                    where,
                    f'{metric} must be filtered with grpc_service="{self.core.service_name}"',
                )
        for label in sorted((promql.grouping | promql.dropped) - labels_of_all):
            self.error(where, f"grouping by {label}, a label of no metric in the expression")
        return promql

    def check_label_value(self, where: str, metric: str, label: str, op: str, value: str) -> None:
        if "$" in value:
            return  # a dashboard variable
        if label == "grpc_service":
            allowed: frozenset[str] = frozenset({self.core.service_name})
        elif label == "job" and self.jobs:
            allowed = frozenset(self.jobs)
        elif label == "container":
            allowed = frozenset({self.container().get("name")})
        elif label == "pod" and op == "=~":
            # A pod of the Deployment: <name>-<replicaset hash>-<suffix>.
            try:
                matches = re.fullmatch(value, f"{NAME}-5d8f7c9b4-x2k9q") is not None
            except re.error as exc:
                self.error(where, f"pod=~{value!r} is no regular expression: {exc}")
                return
            if not matches:
                self.error(where, f"pod=~{value!r} matches none of the Deployment's pods")
            return
        elif label in KNOWN_LABEL_VALUES:
            allowed = KNOWN_LABEL_VALUES[label]
        else:
            return
        if op in ("=~", "!~"):
            if not re.fullmatch(r"[\w|.-]+", value):
                return  # a real regex: not checked
            values = value.split("|")
        else:
            values = [value]
        for one in values:
            if one not in allowed:
                self.error(
                    where,
                    f"{metric}{{{label}{op}…}}: {one!r} is none of {', '.join(sorted(allowed))}",
                )

    # -------------------------------------------------------------- dashboards

    def check_dashboard(self, where: str, path: str) -> None:
        """A Grafana dashboard: JSON without duplicate keys; title, uid,
        schemaVersion and no fixed id; variables with unique names, a
        Prometheus data-source variable every query uses; panels with unique
        ids, known types, a place on the 24-column grid that no other panel
        takes, and Prometheus targets whose expressions read and whose
        legends name labels the result carries."""
        try:
            with open(path, encoding="utf-8") as stream:
                dashboard = json.load(stream, object_pairs_hook=_unique_json_object)
        except ValueError as exc:
            self.error(where, f"not valid JSON: {exc}")
            return
        if not isinstance(dashboard, dict):
            self.error(where, "is not a JSON object")
            return
        if not isinstance(dashboard.get("title"), str) or not dashboard["title"]:
            self.error(where, "needs a title")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", str(dashboard.get("uid", ""))):
            self.error(where, "needs a uid of at most 40 letters, digits, - and _")
        if not isinstance(dashboard.get("schemaVersion"), int):
            self.error(where, "needs a schemaVersion (a number)")
        if dashboard.get("id") is not None:
            self.error(where, "id must be null: Grafana assigns it on import")
        variables = self.check_variables(where, dashboard.get("templating", {}).get("list", []))
        panels = dashboard.get("panels")
        if not isinstance(panels, list) or not panels:
            self.error(where, "has no panels")
            return
        flat: list[Document] = []
        for panel in panels:
            flat.append(panel)
            flat.extend(panel.get("panels", []) if panel.get("type") == "row" else [])
        ids: set[Any] = set()
        taken: list[tuple[str, Document]] = []
        for panel in flat:
            title = panel.get("title") or ""
            at = f"{where} panel {panel.get('id')} {title!r}"
            if not isinstance(panel.get("id"), int) or panel["id"] in ids:
                self.error(at, "needs an id (a number) of its own")
            ids.add(panel.get("id"))
            if panel.get("type") not in GRAFANA_PANEL_TYPES:
                self.error(at, f"unknown panel type {panel.get('type')!r}")
            self.check_grid(at, panel.get("gridPos"), taken)
            self.check_mentions(at, f"{title} {panel.get('description', '')}")
            if panel.get("type") in ("row", "text"):
                continue
            if not title:
                self.error(at, "needs a title")
            self.check_targets(at, panel, variables)

    def check_variables(self, where: str, variables: Document) -> set[str]:
        """The dashboard's variables: unique names, one a Prometheus data
        source, the queries (``label_values(…)`` or PromQL) readable. Returns
        their names."""
        names: set[str] = set()
        for variable in variables:
            name = variable.get("name")
            if not name or name in names:
                self.error(where, f"variable {name!r} has no name or one used twice")
            names.add(name)
        sources = [v for v in variables if v.get("type") == "datasource"]
        if [v.get("query") for v in sources] != ["prometheus"]:
            self.error(where, "needs one data-source variable of type prometheus")
        self.sources = {v.get("name") for v in sources}
        for variable in variables:
            if variable.get("type") != "query":
                continue
            at = f"{where} variable {variable.get('name')}"
            self.check_datasource(at, variable.get("datasource"))
            query = variable.get("query")
            if isinstance(query, dict):
                query = query.get("query")
            if not isinstance(query, str) or not query:
                self.error(at, "needs a query")
                continue
            values = re.fullmatch(r"\s*label_values\((?:(.*),)?\s*(\w+)\s*\)\s*", query)
            if values is None:
                self.check_expression(
                    at, re.sub(r"^\s*query_result\((.*)\)\s*$", r"\1", query), names
                )
                continue
            metric_expr, label = values.groups()
            if metric_expr is None:
                continue
            promql = self.check_expression(at, metric_expr, names)
            result = promql.result_labels()
            if result is not None and label not in result:
                self.error(at, f"label_values of {label}, which the series do not carry")
        return names

    def check_datasource(self, where: str, datasource: Document) -> None:
        """Queries name the data-source variable, so that the dashboard
        works on any Grafana, whatever its Prometheus data source's uid."""
        uid = (datasource or {}).get("uid") if isinstance(datasource, dict) else datasource
        match = re.fullmatch(r"\$\{?(\w+)\}?", str(uid))
        if match is None or match.group(1) not in self.sources:
            self.error(where, f"data source {uid!r} must be the data-source variable")

    def check_grid(self, where: str, grid: Document, taken: list[tuple[str, Document]]) -> None:
        """gridPos: whole numbers, inside the 24 columns, overlapping no panel before."""
        if not isinstance(grid, dict) or not all(
            isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")
        ):
            self.error(where, "gridPos needs whole numbers x, y, w, h")
            return
        if (
            grid["x"] < 0
            or grid["y"] < 0
            or grid["w"] < 1
            or grid["h"] < 1
            or grid["x"] + grid["w"] > 24
        ):
            self.error(where, f"gridPos {grid} is outside the 24-column grid")
        for other, box in taken:
            if (
                grid["x"] < box["x"] + box["w"]
                and box["x"] < grid["x"] + grid["w"]
                and grid["y"] < box["y"] + box["h"]
                and box["y"] < grid["y"] + grid["h"]
            ):
                self.error(where, f"gridPos overlaps {other}")
        taken.append((where.rpartition(" panel ")[2], grid))

    def check_targets(self, where: str, panel: Document, variables: set[str]) -> None:
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            self.error(where, "has no queries (targets)")
            return
        self.check_datasource(where, panel.get("datasource"))
        refs: set[Any] = set()
        for target in targets:
            ref = target.get("refId")
            if not ref or ref in refs:
                self.error(where, f"refId {ref!r} is missing or used twice")
            refs.add(ref)
            if "datasource" in target:
                self.check_datasource(where, target["datasource"])
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                self.error(where, f"query {ref} has no expr")
                continue
            promql = self.check_expression(f"{where} query {ref}", expr, variables)
            result = promql.result_labels()
            for label in _LEGEND_LABEL.findall(str(target.get("legendFormat", ""))):
                if result is not None and label not in result:
                    self.error(
                        f"{where} query {ref}",
                        f"legend uses {{{{{label}}}}}, which the result does not carry",
                    )


# ------------------------------------------------------------------ both layers


@dataclass(frozen=True)
class Validator:
    """Everything the two layers need that does not depend on the directory."""

    executable: str  # kubernetes-validate
    versions: str  # space-separated Kubernetes versions
    settings: Mapping[str, bool]  # {environment variable: secret?}
    #: Layer 1's verdicts (valid?, output with the directory as "{DIR}") by
    #: the manifests' relative paths and contents: a self-test copy whose
    #: schema-checked files are unchanged (it broke a dashboard, a rule)
    #: needs no second run of the validator.
    schema_verdicts: dict[tuple[tuple[str, bytes], ...], tuple[bool, str]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )

    def validate(self, directory: str, out: TextIO, err: TextIO, require_kit: bool = False) -> bool:
        """Run both layers on ``directory/*.yaml`` and the operator kit
        around it (:func:`kit_files`); True if valid. ``require_kit``: a
        missing part of the kit is an error.

        What fails goes to ``out`` (the validator's output, layer 2's
        ``ERROR`` lines); layer 2's abort message or traceback to ``err``.
        """
        if not yaml_files(directory):
            out.write(f"ERROR {directory}: no *.yaml manifests\n")
            return False
        manifests = [
            os.path.join(directory, f)
            for f in kit_files(directory)
            # kustomization.yaml is not a Kubernetes object, and Kubernetes
            # has no schema for the Prometheus Operator's objects or the
            # dashboards: layer 2 checks them.
            if f.endswith(".yaml")
            and os.path.basename(f) != KUSTOMIZATION_FILE
            and not f.startswith(MONITORING_DIR + os.sep)
        ]
        key = tuple((os.path.relpath(m, directory), Path(m).read_bytes()) for m in manifests)
        if key not in self.schema_verdicts:
            log = io.StringIO()
            valid = self.check_schema(manifests, log)
            self.schema_verdicts[key] = (valid, log.getvalue().replace(directory, "{DIR}"))
        valid, output = self.schema_verdicts[key]
        out.write(output.replace("{DIR}", directory))
        return self.check_consistency(directory, out, err, require_kit) and valid

    def check_schema(self, manifests: Sequence[str], out: TextIO) -> bool:
        """Layer 1: kubernetes-validate, strict, against each version; any
        output (--quiet leaves only warnings and failures) fails."""
        versions = [arg for v in self.versions.split() for arg in ("-k", v)]
        result = subprocess.run(
            [self.executable, "--strict", "--quiet", *versions, *manifests],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            check=False,
        )
        output = result.stdout.rstrip("\n")
        if output:
            out.write(output + "\n")
        return result.returncode == 0 and not output

    def check_consistency(
        self, directory: str, out: TextIO, err: TextIO, require_kit: bool = False
    ) -> bool:
        """Layer 2 (:class:`ConsistencyCheck`); a crash counts as invalid."""
        try:
            errors = ConsistencyCheck(
                directory, self.settings, service_name_from_proto(), require_kit
            ).run()
        except LayerAbort as exc:
            err.write(f"{exc}\n")
            return False
        except Exception:
            # A manifest malformed past what the checks expect: show where.
            traceback.print_exc(file=err)
            return False
        if errors:
            out.write("\n".join(errors) + "\n")
        return not errors


# ------------------------------------------------------------------ self-test


@dataclass(frozen=True)
class Edit:
    """re.sub(pattern, replacement, text, count): count 0 replaces every match."""

    pattern: str
    replacement: str
    count: int = 1


@dataclass(frozen=True)
class Case:
    """A scratch copy of the manifests with ``edits`` applied, in order, to
    ``file``; it must be rejected, or accepted when ``valid`` (a documented
    variant)."""

    name: str
    file: str
    edits: tuple[Edit, ...]
    valid: bool = False


def reject(name: str, file: str, *edits: Edit) -> Case:
    return Case(name, file, edits)


def accept(name: str, file: str, *edits: Edit) -> Case:
    return Case(name, file, edits, valid=True)


TLS_ON = Edit(r"(?m)^  # (RESOLVER_TLS_\w+: .*)$", r"  \1", count=0)
HPA = os.path.join(OPTIONAL_DIR, "hpa.yaml")
NETPOL = os.path.join(OPTIONAL_DIR, "networkpolicy.yaml")
MONITOR = os.path.join(MONITORING_DIR, "servicemonitor.yaml")
RULES = os.path.join(MONITORING_DIR, "prometheusrule.yaml")
DASHBOARD = os.path.join(DASHBOARD_DIR, "controlplane-resolver.json")

CASES: tuple[Case, ...] = (
    # Schema layer (strict, pinned versions).
    reject(
        "unknown-field",
        "deployment.yaml",
        Edit(r"(?m)^  replicas: 3$", r"  replicas: 3\n  replica: 3"),
    ),
    reject(
        "wrong-type", "deployment.yaml", Edit(r"containerPort: 50051", r'containerPort: "50051"')
    ),
    reject("misspelled-probe", "deployment.yaml", Edit(r"readinessProbe:", r"readynessProbe:")),
    reject("unknown-api", "pdb.yaml", Edit(r"apiVersion: policy/v1", r"apiVersion: policy/v2")),
    reject(
        "bool-in-configmap",
        "configmap.yaml",
        Edit(r'RUN_OPS_SPLIT_ENABLED: "0"', r"RUN_OPS_SPLIT_ENABLED: false"),
    ),
    # Consistency layer.
    reject(
        "duplicate-key",
        "service.yaml",
        Edit(r"(?m)^  clusterIP: None$", r"  clusterIP: None\n  clusterIP: 10.0.0.1"),
    ),
    reject(
        "unknown-setting",
        "configmap.yaml",
        Edit(r"RESOLVER_SHUTDOWN_GRACE_MS:", r"RESOLVER_SHUTDOWN_GRACE_MSS:"),
    ),
    reject(
        "dsn-in-configmap",
        "configmap.yaml",
        Edit(r"(?m)^data:\n", r'data:\n  RUN_OPS_DATABASE_URL: "postgresql://x@y/z"\n'),
    ),
    reject(
        "short-termination",
        "deployment.yaml",
        Edit(r"terminationGracePeriodSeconds: 35", r"terminationGracePeriodSeconds: 25"),
    ),
    reject(
        "probe-service",
        "deployment.yaml",
        Edit(
            r"service: controlplane.resolver.v1.ControlPlaneResolverService",
            r"service: controlplane.resolver.v1.Resolver",
        ),
    ),
    reject("probe-port", "deployment.yaml", Edit(r"(?s)(livenessProbe:.*?port:) 8081", r"\1 8082")),
    # Probes on the API port while RESOLVER_HEALTH_ADDR says 8081: they would
    # fail as soon as TLS, mutual TLS or overload reaches port 50051.
    reject(
        "probes-on-api-port", "deployment.yaml", Edit(r"\bport: 8081\b", r"port: 50051", count=0)
    ),
    reject(
        "health-addr-moved",
        "configmap.yaml",
        Edit(r'RESOLVER_HEALTH_ADDR: "0.0.0.0:8081"', r'RESOLVER_HEALTH_ADDR: "0.0.0.0:8082"'),
    ),
    reject("no-health-addr", "configmap.yaml", Edit(r"(?m)^  RESOLVER_HEALTH_ADDR: .*\n", "")),
    reject("loopback-health", "configmap.yaml", Edit(r'"0.0.0.0:8081"', r'"127.0.0.1:8081"')),
    reject("port-clash", "configmap.yaml", Edit(r"0.0.0.0:50051", r"0.0.0.0:9090")),
    # Several processes still take one metrics port (the parent serves them all).
    accept(
        "three-processes",
        "configmap.yaml",
        Edit(
            r'(?m)^(  RESOLVER_HEALTH_ADDR:) "0.0.0.0:8081"$',
            r'\1 "0.0.0.0:8081"\n  RESOLVER_PROCESSES: "3"',
        ),
    ),
    reject("metrics-port", "configmap.yaml", Edit(r"0.0.0.0:9090", r"0.0.0.0:9091")),
    reject("not-headless", "service.yaml", Edit(r"(?m)^  clusterIP: None\n", "")),
    reject("int-or-string", "pdb.yaml", Edit(r"maxUnavailable: 1", r'maxUnavailable: "one"')),
    reject(
        "selector-mismatch",
        "pdb.yaml",
        Edit(r"(matchLabels:\n\s+app.kubernetes.io/name:) controlplane-resolver", r"\1 other"),
    ),
    reject(
        "subpath-mount",
        "deployment.yaml",
        Edit(
            r"(mountPath: /etc/controlplane-resolver/tokens)\n",
            r"\1\n              subPath: tokens\n",
        ),
    ),
    reject(
        "missing-secret",
        "secret.example.yaml",
        Edit(r"name: controlplane-resolver-tokens", r"name: controlplane-resolver-tokenz"),
    ),
    reject("kustomize-list", "kustomization.yaml", Edit(r"(?m)^  - pdb.yaml\n", "")),
    # TLS as the ConfigMap documents it (uncomment the three lines): valid,
    # because the probes do not touch the API port; and a mistyped path is not.
    accept("tls-on", "configmap.yaml", TLS_ON),
    reject("tls-wrong-key", "configmap.yaml", TLS_ON, Edit(r"tls/tls.crt", r"tls/tls.pem")),
    # ---- the operator kit: optional/ (schema layer, then consistency)
    reject(
        "hpa-wrong-type",
        HPA,
        Edit(r"averageUtilization: 70", r'averageUtilization: "70"'),
    ),
    reject("netpol-unknown-field", NETPOL, Edit(r"policyTypes:", r"policyType:")),
    reject(
        "hpa-target",
        HPA,
        Edit(r"(kind: Deployment\n\s+name:) controlplane-resolver", r"\1 resolver"),
    ),
    reject("hpa-min-replicas", HPA, Edit(r"minReplicas: 3", r"minReplicas: 1")),
    reject("hpa-max-below-min", HPA, Edit(r"maxReplicas: 12", r"maxReplicas: 2")),
    reject(
        "hpa-unrequested-resource",
        HPA,
        Edit(r"name: cpu", r"name: ephemeral-storage"),
    ),
    reject(
        "netpol-selector",
        NETPOL,
        Edit(
            r"(podSelector:\n\s+matchLabels:\n\s+app.kubernetes.io/name:) controlplane-resolver",
            r"\1 x",
        ),
    ),
    reject("netpol-port-name", NETPOL, Edit(r"port: grpc\b", r"port: api")),
    reject("netpol-no-metrics", NETPOL, Edit(r"port: metrics\b", r"port: health")),
    reject("netpol-no-dns", NETPOL, Edit(r"protocol: UDP", r"protocol: SCTP")),
    reject("netpol-database-port", NETPOL, Edit(r"port: 5432", r"port: 5433")),
    # The destination narrowed as the comment documents: still valid.
    accept(
        "netpol-narrowed",
        NETPOL,
        Edit(r"(?m)^(      )# ((?:to:|  - ipBlock:|      cidr:).*)$", r"\1\2", count=0),
    ),
    # ---- monitoring/
    reject("monitoring-api", RULES, Edit(r"monitoring.coreos.com/v1", r"monitoring.coreos.com/v2")),
    reject(
        "monitoring-kustomize-list",
        "monitoring/kustomization.yaml",
        Edit(r"(?m)^  - prometheusrule.yaml\n", ""),
    ),
    reject("servicemonitor-port", MONITOR, Edit(r"- port: metrics", r"- port: http-metrics")),
    reject(
        "servicemonitor-selector",
        MONITOR,
        Edit(r"app.kubernetes.io/component: metrics", r"app.kubernetes.io/component: metric"),
    ),
    reject("servicemonitor-field", MONITOR, Edit(r"scrapeTimeout:", r"timeout:")),
    reject("servicemonitor-timeout", MONITOR, Edit(r"scrapeTimeout: 10s", r"scrapeTimeout: 1m")),
    reject("servicemonitor-path", MONITOR, Edit(r"path: /metrics", r"path: /metric")),
    # The rules' job label follows the metrics Service's name.
    reject(
        "metrics-service-renamed",
        "service.yaml",
        Edit(r"name: controlplane-resolver-metrics", r"name: resolver-metrics"),
    ),
    reject(
        "rule-unknown-metric",
        RULES,
        Edit(r"resolver_listener_listening == 0", r"resolver_listener_up == 0"),
    ),
    reject(
        "rule-unknown-label",
        RULES,
        Edit(r'grpc_code="UNAVAILABLE"', r'grpc_status="UNAVAILABLE"'),
    ),
    reject(
        "rule-label-value",
        RULES,
        Edit(r'grpc_code!~"OK\|NOT_FOUND"', r'grpc_code!~"OK|NOTFOUND"'),
    ),
    reject(
        "rule-unbalanced",
        RULES,
        Edit(
            r"\(rate\(resolver_pool_errors_total\[5m\]\)\)",
            r"(rate(resolver_pool_errors_total[5m])",
        ),
    ),
    reject(
        "rule-no-range",
        RULES,
        Edit(r"rate\(resolver_pool_errors_total\[5m\]\)", r"rate(resolver_pool_errors_total)"),
    ),
    reject(
        "rule-unknown-function",
        RULES,
        Edit(r"increase\(kube_pod", r"increases(kube_pod"),
    ),
    reject(
        "rule-quantile-without-le",
        RULES,
        Edit(r"sum by \(namespace, grpc_method, le\)", r"sum by (namespace, grpc_method)"),
    ),
    reject(
        "rule-other-grpc-servers",
        RULES,
        Edit(
            r'(rate\(grpc_server_handled_total\{)grpc_service="[\w.]+", ',
            r"\1",
        ),
    ),
    reject("rule-no-for", RULES, Edit(r"(?m)^          for: 5m\n", "")),
    reject("rule-bad-duration", RULES, Edit(r"for: 10m", r"for: 10 minutes")),
    reject("rule-severity", RULES, Edit(r"severity: critical", r"severity: page")),
    reject("rule-no-description", RULES, Edit(r"description:", r"details:")),
    reject("rule-annotation-label", RULES, Edit(r"\$labels\.database", r"$labels.pod")),
    reject(
        "rule-mentions", RULES, Edit(r"resolver_pool_requests_waiting", r"resolver_pool_waiting")
    ),
    reject(
        "rule-unknown-field",
        RULES,
        Edit(r"(?m)^          for: 10m$", r"          for: 10m\n          severity: warning"),
    ),
    # ---- the dashboard
    reject("dashboard-json", DASHBOARD, Edit(r'"schemaVersion": 39,', r'"schemaVersion": 39,,')),
    reject(
        "dashboard-duplicate-key",
        DASHBOARD,
        Edit(r'(?m)^  "title": (.*)$', r'  "title": \1\n  "title": \1'),
    ),
    reject(
        "dashboard-unknown-metric",
        DASHBOARD,
        Edit(r"resolver_pool_requests_waiting\{", r"resolver_pool_waiting{"),
    ),
    reject("dashboard-variable", DASHBOARD, Edit(r'pod=~\\"\$pod\\"', r'pod=~\\"$pods\\"')),
    reject("dashboard-panel-id", DASHBOARD, Edit(r'"id": 3,', r'"id": 2,')),
    reject("dashboard-grid", DASHBOARD, Edit(r'"w": 12', r'"w": 13')),
    reject(
        "dashboard-legend",
        DASHBOARD,
        Edit(r'"legendFormat": "\{\{grpc_method\}\}"', r'"legendFormat": "{{grpc_code}}"'),
    ),
    reject(
        "dashboard-datasource",
        DASHBOARD,
        Edit(r'"uid": "\$\{datasource\}"', r'"uid": "prometheus"'),
    ),
    reject(
        "dashboard-mentions",
        DASHBOARD,
        Edit(r"\(resolver_pool_errors_total\)", r"(resolver_pool_error_total)"),
    ),
)


def first_problem(log: str) -> str:
    """The first line of ``log`` starting ERROR, WARN or FATAL, else its first line."""
    lines = log.split("\n")
    return next((line for line in lines if re.match(r"ERROR|WARN|FATAL", line)), lines[0])


def make_copy(case: Case, source: str, scratch: str) -> str | None:
    """A fresh copy ``scratch/<case.name>/manifests`` of ``source``'s files
    (:func:`kit_files`, the dashboards landing in ``…/grafana``) with the
    case's edits applied; None when they changed nothing (the case would
    prove nothing)."""
    copy = os.path.join(scratch, case.name, "manifests")
    for file in kit_files(source):
        target = Path(os.path.normpath(os.path.join(copy, file)))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(source, file).read_bytes())
    edited = Path(os.path.normpath(os.path.join(copy, case.file)))
    if not edited.is_file():
        return None
    original = edited.read_bytes()
    text = original.decode("utf-8", errors="surrogateescape")
    for edit in case.edits:
        text = re.sub(edit.pattern, edit.replacement, text, count=edit.count)
    changed = text.encode("utf-8", errors="surrogateescape")
    if changed == original:
        return None
    edited.write_bytes(changed)
    return copy


def self_test(
    validator: Validator, source: str, scratch: str, require_kit: bool = False
) -> tuple[int, int]:
    """Run every case of CASES on copies of ``source`` under ``scratch``,
    printing one line each; returns (cases as expected, cases not)."""
    passed = failed = 0
    for case in CASES:
        copy = make_copy(case, source, scratch)
        if copy is None:
            print(f"self-test: FAIL {case.name}: the edit did not apply to {case.file}")
            failed += 1
            continue
        log = io.StringIO()
        valid = validator.validate(copy, log, log, require_kit)
        problem = first_problem(log.getvalue())
        if valid and case.valid:
            print(f"self-test: ok   {case.name} accepted")
        elif valid:
            print(f"self-test: FAIL {case.name}: the broken copy was accepted")
        elif case.valid:
            print(f"self-test: FAIL {case.name}: the valid variant was rejected: {problem}")
        else:
            print(f"self-test: ok   {case.name} rejected: {problem}")
        if valid == case.valid:
            passed += 1
        else:
            failed += 1
    return passed, failed


# ------------------------------------------------------------------ CLI


def usage(message: str | None = None) -> int:
    """Print ``message`` (if any) and USAGE on standard error; return 2."""
    if message:
        print(message, file=sys.stderr)
    sys.stderr.write(USAGE)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Validate DIR (default deploy/kubernetes/); with --self-test, then
    check that every broken copy is rejected. ``argv`` excludes the program
    name (default: sys.argv[1:]). Returns the exit status: 0 valid, 1
    invalid or a self-test case not as expected, 2 usage or set-up error."""
    args = sys.argv[1:] if argv is None else argv
    if isinstance(sys.stdout, io.TextIOWrapper):
        # Keep the order of stdout and stderr lines when both go to one file.
        sys.stdout.reconfigure(line_buffering=True)

    run_self_test = False
    target = ""
    for arg in args:
        if arg == "--self-test":
            run_self_test = True
        elif arg in ("-h", "--help"):
            return usage()
        elif arg.startswith("-"):
            return usage(f"validate-k8s: unknown option {arg}")
        elif target:
            return usage()
        else:
            target = arg
    # Resolve the target before moving to the repository root.
    if target:
        if not os.path.isdir(target):
            print(f"validate-k8s: {target} is not a directory", file=sys.stderr)
            return 2
        target = os.path.abspath(target)
    os.chdir(REPO)
    target = target or DEFAULT_TARGET

    try:
        validator = Validator(validator_executable(), k8s_versions(), load_settings())
    except SetupError as exc:
        print(exc, file=sys.stderr)
        return 2

    started = time.monotonic()
    shown = target.removeprefix(REPO + "/")
    # The repository's own deploy/ ships the whole operator kit; another
    # DIR may hold the manifests alone.
    require_kit = target == DEFAULT_TARGET
    if not validator.validate(target, sys.stdout, sys.stderr, require_kit):
        print(f"validate-k8s: FAILED: invalid manifests in {shown}", file=sys.stderr)
        return 1
    print(
        f"validate-k8s: OK: {len(kit_files(target))} files ({shown} and its operator kit) "
        f"valid against Kubernetes {validator.versions} (strict)"
    )
    if not run_self_test:
        return 0

    with tempfile.TemporaryDirectory(prefix="tmp.") as scratch:
        passed, failed = self_test(validator, target, scratch, require_kit)
    elapsed = int(time.monotonic() - started)
    print(f"self-test: {passed} of {passed + failed} cases as expected ({elapsed} s in all)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
