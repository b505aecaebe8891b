"""Validate the Kubernetes manifests in deploy/kubernetes/ offline.

    python scripts/validate_k8s.py               validate deploy/kubernetes/
    python scripts/validate_k8s.py DIR           validate the manifests in DIR instead
    python scripts/validate_k8s.py --self-test   validate deploy/kubernetes/, then break
                                                 scratch copies one way at a time and
                                                 require every one to be rejected (CI)

The usual entry point is ``bash scripts/validate-k8s.sh``, which installs the
pinned ``kubernetes-validate`` into .venv and then runs this module with
.venv's Python. Run directly, the module needs that validator installed beside
the interpreter running it, PyYAML, and the server package
(``controlplane_resolver``, for its settings table).

Two layers, neither needs a network or a cluster:

 1. Schema. ``kubernetes-validate --strict`` checks every manifest (all
    ``*.yaml`` but kustomization.yaml) against the OpenAPI schemas of each
    Kubernetes version in ``K8S_VERSIONS`` (environment; default: the oldest
    supported, 1.27, where native gRPC probes are GA, and the newest the
    pinned validator knows). Strict mode rejects unknown fields. Anything the
    validator prints fails, warnings included: it only *warns* when it has no
    schema for a kind/apiVersion (a typo such as apps/v2 would pass).
 2. Consistency the schema cannot see (:class:`ConsistencyCheck`): duplicate
    YAML keys, ConfigMap/Secret keys that are not settings of
    ``controlplane_resolver.config.OPTIONS`` (or a secret in the ConfigMap),
    names and ports that must agree across files, file settings that must
    point into a mounted Secret, the shutdown timing, the gRPC health service
    names, and kustomization.yaml's resource list.

Both layers always run; what they find is printed (``ERROR …``/``WARN …``
lines) on standard output. A crash of layer 2 on a malformed manifest prints
its traceback on standard error and counts as invalid.

Exit status: 0 valid, 1 a manifest is invalid (or --self-test found a break
that passed, or a documented variant that was rejected), 2 usage or set-up
error.
"""

from __future__ import annotations

import glob
import io
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
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
Validate the Kubernetes manifests offline.

  bash scripts/validate-k8s.sh               validate deploy/kubernetes/
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


# ------------------------------------------------------------------ layer 2


class ConsistencyCheck:
    """Layer 2 over the ``*.yaml`` files of one directory.

    :meth:`run` returns the ``ERROR file: message`` lines, in the order
    found; empty means consistent. It raises LayerAbort when the settings
    table is empty or the proto names no service, and may raise anything
    else on a manifest malformed past what the checks anticipate (the caller
    reports that as invalid).
    """

    def __init__(self, directory: str, settings: Mapping[str, bool], service_name: str) -> None:
        self.directory = directory
        self.settings = settings
        self.service_name = service_name
        self.errors: list[str] = []
        #: (kind, metadata.name) → (file, object), every object but the kustomization.
        self.objects: dict[tuple[Any, Any], tuple[str, Document]] = {}
        self.kustomization: Document = None
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
        self.check_kustomization()
        return self.errors

    # -------------------------------------------------------------- load

    def load(self) -> None:
        """Parse every ``*.yaml`` (duplicate keys rejected); each must hold
        Kubernetes objects, namespace-agnostic, labelled with NAME, and no
        (kind, name) may be defined twice."""
        files = sorted(f for f in os.listdir(self.directory) if f.endswith(".yaml"))
        for file in files:
            try:
                with open(os.path.join(self.directory, file)) as stream:
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
                if file == KUSTOMIZATION_FILE:
                    self.kustomization = doc
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

    def check_kustomization(self) -> None:
        """kustomization.yaml, when present, lists every manifest but the
        placeholder Secret, and nothing else."""
        if self.kustomization is None:
            return
        listed = set(self.kustomization.get("resources", []))
        expected = {f for f in os.listdir(self.directory) if f.endswith(".yaml")} - {
            KUSTOMIZATION_FILE,
            SECRET_FILE,
        }
        if SECRET_FILE in listed:
            self.error(KUSTOMIZATION_FILE, f"must not list {SECRET_FILE} (placeholders)")
        for missing in sorted(expected - listed):
            self.error(KUSTOMIZATION_FILE, f"does not list {missing}")
        for extra in sorted(listed - expected - {SECRET_FILE}):
            self.error(KUSTOMIZATION_FILE, f"lists {extra}, which does not exist")


# ------------------------------------------------------------------ both layers


@dataclass(frozen=True)
class Validator:
    """Everything the two layers need that does not depend on the directory."""

    executable: str  # kubernetes-validate
    versions: str  # space-separated Kubernetes versions
    settings: Mapping[str, bool]  # {environment variable: secret?}

    def validate(self, directory: str, out: TextIO, err: TextIO) -> bool:
        """Run both layers on ``directory/*.yaml``; True if valid.

        What fails goes to ``out`` (the validator's output, layer 2's
        ``ERROR`` lines); layer 2's abort message or traceback to ``err``.
        """
        manifests = [
            f
            for f in yaml_files(directory)
            # kustomization.yaml is not a Kubernetes object: layer 2 checks it.
            if os.path.exists(f) and os.path.basename(f) != KUSTOMIZATION_FILE
        ]
        if not manifests:
            out.write(f"ERROR {directory}: no *.yaml manifests\n")
            return False
        valid = self.check_schema(manifests, out)
        return self.check_consistency(directory, out, err) and valid

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

    def check_consistency(self, directory: str, out: TextIO, err: TextIO) -> bool:
        """Layer 2 (:class:`ConsistencyCheck`); a crash counts as invalid."""
        try:
            errors = ConsistencyCheck(directory, self.settings, service_name_from_proto()).run()
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
)


def first_problem(log: str) -> str:
    """The first line of ``log`` starting ERROR, WARN or FATAL, else its first line."""
    lines = log.split("\n")
    return next((line for line in lines if re.match(r"ERROR|WARN|FATAL", line)), lines[0])


def make_copy(case: Case, source: str, scratch: str) -> str | None:
    """A fresh copy ``scratch/<case.name>`` of ``source/*.yaml`` with the
    case's edits applied; None when they changed nothing (the case would
    prove nothing)."""
    copy = os.path.join(scratch, case.name)
    os.mkdir(copy)
    for path in yaml_files(source):
        if os.path.isfile(path):
            Path(copy, os.path.basename(path)).write_bytes(Path(path).read_bytes())
    edited = Path(copy, case.file)
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


def self_test(validator: Validator, source: str, scratch: str) -> tuple[int, int]:
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
        valid = validator.validate(copy, log, log)
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
    if not validator.validate(target, sys.stdout, sys.stderr):
        print(f"validate-k8s: FAILED: invalid manifests in {shown}", file=sys.stderr)
        return 1
    print(
        f"validate-k8s: OK: {len(yaml_files(target))} files in {shown} valid against "
        f"Kubernetes {validator.versions} (strict)"
    )
    if not run_self_test:
        return 0

    with tempfile.TemporaryDirectory(prefix="tmp.") as scratch:
        passed, failed = self_test(validator, target, scratch)
    elapsed = int(time.monotonic() - started)
    print(f"self-test: {passed} of {passed + failed} cases as expected ({elapsed} s in all)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
