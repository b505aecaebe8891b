#!/usr/bin/env bash
# Validate the Kubernetes manifests offline.
#
#   bash scripts/validate-k8s.sh               validate deploy/kubernetes/
#   bash scripts/validate-k8s.sh DIR           validate the manifests in DIR instead
#   bash scripts/validate-k8s.sh --self-test   validate deploy/kubernetes/, then break
#                                              scratch copies one way at a time and
#                                              require every one to be rejected (CI)
#
# Two layers, neither needs a network or a cluster:
#
#  1. Schema. kubernetes-validate (PyPI, pinned below) carries the OpenAPI
#     schemas of each Kubernetes release. Strict mode rejects unknown fields.
#     Each manifest is checked against the oldest Kubernetes this deployment
#     supports (1.27: native gRPC probes are GA) and the newest release the
#     pinned validator knows. The validator only *warns* when it has no
#     schema for a kind/apiVersion (a typo such as apps/v2 would pass), so
#     any warning fails here.
#  2. Consistency the schema cannot see: duplicate YAML keys (PyYAML keeps
#     the last one silently), ConfigMap/Secret keys that are not settings of
#     server/controlplane_resolver/config.py (or a DSN in the ConfigMap),
#     names and ports that must agree across files (the probes on the port of
#     RESOLVER_HEALTH_ADDR, distinct ports counting one metrics port per
#     process), file settings that must point into a mounted Secret, the
#     shutdown timing, the gRPC health service names, and kustomization.yaml's
#     resource list.
#
# Runs from any directory (it moves to the repository root). Needs python3
# (3.10+); installs the pinned validator into .venv when it is missing or
# another version (the only step that may use the network: PyPI). In CI it
# runs after `make install`, which already puts the validator in .venv.
#
# Exit status: 0 valid, 1 a manifest is invalid (or --self-test found a
# break that passed), 2 usage or set-up error.
set -euo pipefail

VALIDATOR_PIN="kubernetes-validate==1.37.0"
# Oldest supported and newest known Kubernetes; override for a one-off check
# with K8S_VERSIONS="1.30.0 1.33.0".
K8S_VERSIONS="${K8S_VERSIONS:-1.27.0 1.37.0}"

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

self_test=0
target=""
for arg in "$@"; do
    case "$arg" in
        --self-test) self_test=1 ;;
        -h|--help) usage ;;
        -*) echo "validate-k8s: unknown option $arg" >&2; usage ;;
        *) [ -z "$target" ] || usage; target=$arg ;;
    esac
done
# Resolve the target before moving to the repository root.
if [ -n "$target" ]; then
    [ -d "$target" ] || { echo "validate-k8s: $target is not a directory" >&2; exit 2; }
    target=$(cd "$target" && pwd)
fi
cd "$(dirname "$0")/.."
repo=$(pwd)
target=${target:-$repo/deploy/kubernetes}

# ------------------------------------------------------------------ set-up
if [ ! -x .venv/bin/python ]; then
    echo "validate-k8s: creating .venv"
    python3 -m venv .venv || { echo "validate-k8s: python3 -m venv failed" >&2; exit 2; }
    # As the Makefile does, so a later `make install` finds the .venv it expects.
    .venv/bin/python -m pip install --quiet 'pip>=23'
fi
PY=.venv/bin/python
want_version=${VALIDATOR_PIN#*==}
have_version=$("$PY" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' \
    2>/dev/null || true)
if [ "$have_version" != "$want_version" ]; then
    echo "validate-k8s: installing $VALIDATOR_PIN into .venv"
    "$PY" -m pip install --quiet --disable-pip-version-check "$VALIDATOR_PIN" ||
        { echo "validate-k8s: could not install $VALIDATOR_PIN" >&2; exit 2; }
fi

# --------------------------------------------------------------- validation
# validate DIR: both layers on DIR/*.yaml; prints what failed; returns 0/1.
validate() {
    local dir=$1 manifests=() f out status=0 versions=()
    for f in "$dir"/*.yaml; do
        [ -e "$f" ] || continue
        # Not a Kubernetes object: layer 2 checks it.
        [ "$(basename "$f")" = kustomization.yaml ] && continue
        manifests+=("$f")
    done
    if [ ${#manifests[@]} -eq 0 ]; then
        echo "ERROR $dir: no *.yaml manifests"
        return 1
    fi
    for v in $K8S_VERSIONS; do versions+=(-k "$v"); done

    # Layer 1. --quiet prints only warnings and failures.
    out=$(.venv/bin/kubernetes-validate --strict --quiet "${versions[@]}" "${manifests[@]}" 2>&1) ||
        status=1
    if [ -n "$out" ]; then
        printf '%s\n' "$out"
        status=1  # a warning ("no schema for …") is a failure too
    fi

    # Layer 2.
    "$PY" - "$dir" "$repo" <<'PY' || status=1
"""Cross-file consistency of the manifests (see the header of this script)."""
import ast
import os
import re
import sys

import yaml

directory, repo = sys.argv[1], sys.argv[2]
NAME = "controlplane-resolver"
errors: list[str] = []


def error(where: str, message: str) -> None:
    errors.append(f"ERROR {where}: {message}")


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML
    would keep the last; the API server's strict decoding rejects it)."""


def _mapping(loader: UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def settings_from_config() -> dict[str, bool]:
    """{env var: secret?} from OPTIONS in config.py, read with ast (no
    import: the server's dependencies need not be installed)."""
    path = os.path.join(repo, "server/controlplane_resolver/config.py")
    tree = ast.parse(open(path).read(), path)
    found = {}
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Option":
            args = [a.value for a in call.args[:2] if isinstance(a, ast.Constant)]
            kw = {k.arg: k.value for k in call.keywords}
            env = args[1] if len(args) > 1 else getattr(kw.get("env"), "value", None)
            secret = kw.get("secret")
            found[env] = bool(isinstance(secret, ast.Constant) and secret.value)
    if not found:
        sys.exit(f"ERROR {path}: no Option(...) entries found; update validate-k8s.sh")
    return found


def service_name_from_proto() -> str:
    path = os.path.join(repo, "protos/controlplane/resolver/v1/resolver.proto")
    text = open(path).read()
    package = re.search(r"^package\s+([\w.]+)\s*;", text, re.M).group(1)
    service = re.search(r"^service\s+(\w+)", text, re.M).group(1)
    return f"{package}.{service}"


# ------------------------------------------------------------ load
objects: dict[tuple[str, str], tuple[str, dict]] = {}  # (kind, name) -> (file, object)
kustomization = None
for file in sorted(f for f in os.listdir(directory) if f.endswith(".yaml")):
    try:
        docs = [d for d in yaml.load_all(open(os.path.join(directory, file)), UniqueKeyLoader)
                if d is not None]
    except yaml.YAMLError as exc:
        error(file, f"not valid YAML: {exc}")
        continue
    if not docs:
        error(file, "holds no object")
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc:
            error(file, "a document is not a Kubernetes object (no kind)")
            continue
        if file == "kustomization.yaml":
            kustomization = doc
            continue
        meta = doc.get("metadata") or {}
        where = f"{file} {doc['kind']}/{meta.get('name')}"
        if "namespace" in meta:
            error(where, "sets metadata.namespace; the manifests are namespace-agnostic")
        if (meta.get("labels") or {}).get("app.kubernetes.io/name") != NAME:
            error(where, f"lacks the label app.kubernetes.io/name: {NAME}")
        key = (doc["kind"], meta.get("name"))
        if key in objects:
            error(where, f"also defined in {objects[key][0]}")
        objects[key] = (file, doc)


def get(kind: str, name: str) -> dict | None:
    found = objects.get((kind, name))
    if found is None:
        error(kind, f"{kind}/{name} is not defined in any manifest")
        return None
    return found[1]


def port_of(addr: str) -> int | None:
    """The port of host:port, or None (reported) when it is not a number."""
    try:
        return int(addr.rpartition(":")[2])
    except ValueError:
        error("configmap.yaml", f"{addr!r} is not host:port")
        return None


if errors:  # cannot cross-check what did not load
    print("\n".join(errors))
    sys.exit(1)

settings = settings_from_config()
service_name = service_name_from_proto()

# ------------------------------------------------------------ Deployment
deployment = get("Deployment", NAME) or {}
spec = deployment.get("spec", {})
pod = spec.get("template", {})
pod_labels = pod.get("metadata", {}).get("labels", {})
pod_spec = pod.get("spec", {})
containers = pod_spec.get("containers", [])
container = containers[0] if containers else {}
D = "deployment.yaml"


def selects_pods(where: str, selector: dict | None) -> None:
    selector = selector or {}
    if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
        error(where, f"selector {selector} does not select the Deployment's pods {pod_labels}")


selects_pods(D, spec.get("selector", {}).get("matchLabels"))
if pod_labels.get("app.kubernetes.io/name") != NAME:
    error(D, f"pod template lacks the label app.kubernetes.io/name: {NAME}")

# Configuration wiring: envFrom names exist; key sets match config.py.
config_maps = [e["configMapRef"]["name"] for e in container.get("envFrom", [])
               if "configMapRef" in e]
secret_refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
env: dict[str, str] = {}
for name in config_maps:
    data = (get("ConfigMap", name) or {}).get("data", {})
    for key, value in data.items():
        if key not in settings:
            error("configmap.yaml", f"{key} is not a setting of config.py (a typo?)")
        elif settings[key]:
            error("configmap.yaml", f"{key} is secret: it belongs in a Secret")
        env[key] = value
for name in secret_refs:
    secret = get("Secret", name) or {}
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for key in sorted(keys - {k for k, s in settings.items() if s}):
        error("secret.example.yaml", f"Secret/{name} key {key} is not a secret setting")
    for key in sorted({k for k, s in settings.items() if s} - keys):
        error("secret.example.yaml", f"Secret/{name} lacks the secret setting {key}")
if not config_maps or not secret_refs:
    error(D, "the container must take envFrom one ConfigMap and one Secret")
# The Deployment depends on these; RESOLVER_HEALTH_ADDR because the probes
# use the plaintext health port (they cannot speak TLS or send a token).
for required in ("RESOLVER_ADDR", "RESOLVER_HEALTH_ADDR", "RESOLVER_METRICS_ADDR",
                 "RESOLVER_SHUTDOWN_PAUSE_MS", "RESOLVER_SHUTDOWN_GRACE_MS",
                 "RESOLVER_AUTH_TOKENS_FILE"):
    if required not in env:
        error("configmap.yaml", f"{required} must be set (the Deployment depends on it)")

# Listening addresses: the kubelet (probes), the Service and Prometheus all
# connect to the pod IP, so each must listen on the wildcard address; and
# the ports must differ (with RESOLVER_PROCESSES=N every port is still one:
# the processes share the gRPC and health ports, and the parent serves all
# their metrics). A clash fails start-up, or worse, under SO_REUSEPORT
# splits one port's connections between two servers.
ADDRESSES = {"RESOLVER_ADDR": "grpc", "RESOLVER_HEALTH_ADDR": "health",
             "RESOLVER_METRICS_ADDR": "metrics"}  # setting -> containerPort name
WILDCARD = {"0.0.0.0", "[::]", "::", ""}
addr_port: dict[str, int | None] = {}
for setting in ADDRESSES:
    if setting in env:
        if env[setting].rpartition(":")[0] not in WILDCARD:
            error("configmap.yaml", f"{setting} {env[setting]} must listen on 0.0.0.0 (or [::]): "
                                    "the kubelet, the Service and Prometheus connect to the pod IP")
        addr_port[setting] = port_of(env[setting])
if not env.get("RESOLVER_PROCESSES", "1").isdigit():
    error("configmap.yaml", "RESOLVER_PROCESSES must be a whole number")
claimed: dict[int, str] = {}
for setting, port in addr_port.items():
    if port is None:
        continue
    if port in claimed:
        error("configmap.yaml", f"{setting} uses port {port}, as {claimed[port]} does")
    claimed.setdefault(port, setting)

# Ports: each address's port = the containerPort of its name; scrape port.
ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
for setting, name in ADDRESSES.items():
    if addr_port.get(setting) is not None and ports.get(name) != addr_port[setting]:
        error(D, f"containerPort {name} {ports.get(name)} != {setting} {env[setting]}")
annotations = pod.get("metadata", {}).get("annotations", {})
if annotations.get("prometheus.io/port") != str(ports.get("metrics")):
    error(D, "annotation prometheus.io/port differs from containerPort metrics")
# Kubelet health probes: all on the health port (plaintext, no token, outside
# the call limit; a probe on the API port fails once TLS or mutual TLS is on
# there, and under overload); readiness on the resolver service, liveness
# and startup on "" (the whole server).
health_port = addr_port.get("RESOLVER_HEALTH_ADDR")
expected_service = {"readinessProbe": service_name, "livenessProbe": "", "startupProbe": ""}
for probe_name, service in expected_service.items():
    grpc = (container.get(probe_name) or {}).get("grpc")
    if grpc is None:
        error(D, f"{probe_name} must be a native gRPC probe")
        continue
    if health_port is not None and grpc.get("port") != health_port:
        error(D, f"{probe_name} probes port {grpc.get('port')}, not the health port "
                 f"{health_port} of RESOLVER_HEALTH_ADDR")
    if grpc.get("service", "") != service:
        error(D, f"{probe_name} asks health for service {grpc.get('service')!r}; "
                 f"the server reports {service!r}")

# Shutdown: the kubelet must not SIGKILL a replica still pausing or draining.
try:
    drain_ms = int(env.get("RESOLVER_SHUTDOWN_PAUSE_MS", 0)) + int(
        env.get("RESOLVER_SHUTDOWN_GRACE_MS", 0))
    period = pod_spec.get("terminationGracePeriodSeconds", 30)
    if not drain_ms < period * 1000:
        error(D, f"terminationGracePeriodSeconds {period}s must exceed RESOLVER_SHUTDOWN_"
                 f"PAUSE_MS + RESOLVER_SHUTDOWN_GRACE_MS ({drain_ms} ms)")
except ValueError:
    error("configmap.yaml", "RESOLVER_SHUTDOWN_*_MS must be whole numbers")

# Secret volumes: whole-directory mounts (subPath never sees updates), and
# the tokens file named in the ConfigMap is a key of the mounted Secret.
volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
mounts = container.get("volumeMounts", [])
for mount in mounts:
    volume = volumes.get(mount["name"])
    if volume is None:
        error(D, f"volumeMount {mount['name']} has no volume")
    elif "secret" in volume:
        if "subPath" in mount or "subPathExpr" in mount:
            error(D, f"Secret volume {mount['name']} is mounted with subPath: updates "
                     "(token and certificate rotation) would never reach the pod")
        get("Secret", volume["secret"]["secretName"])
# Settings that name a file (tokens, TLS): the file is a key of a Secret
# mounted, as a whole directory, at the file's directory.
for setting in ("RESOLVER_AUTH_TOKENS_FILE", "RESOLVER_TLS_CERT", "RESOLVER_TLS_KEY",
                "RESOLVER_TLS_CLIENT_CA"):
    path = env.get(setting, "")
    if not path:
        continue
    directory_of, _, key = path.rpartition("/")
    mount = next((m for m in mounts if m.get("mountPath", "").rstrip("/") == directory_of),
                 None)
    secret_name = volumes.get((mount or {}).get("name"), {}).get("secret", {}).get("secretName")
    if secret_name is None:
        error(D, f"no Secret is mounted at {directory_of} ({setting})")
        continue
    secret = objects.get(("Secret", secret_name), (None, {}))[1]
    if key not in set(secret.get("stringData", {})) | set(secret.get("data", {})):
        error(D, f"{setting} names key {key!r}, absent from Secret/{secret_name}")

# Security context the image and the issue require.
security = container.get("securityContext", {})
if not (security.get("runAsNonRoot") or pod_spec.get("securityContext", {}).get("runAsNonRoot")):
    error(D, "runAsNonRoot must be true")
if security.get("readOnlyRootFilesystem") is not True:
    error(D, "readOnlyRootFilesystem must be true")
if "ALL" not in security.get("capabilities", {}).get("drop", []):
    error(D, "capabilities must drop ALL")

# ------------------------------------------------------------ Service, PDB
grpc_service = get("Service", NAME) or {}
if grpc_service.get("spec", {}).get("clusterIP") != "None":
    error("service.yaml", f"Service/{NAME} must be headless (clusterIP: None) for "
                          "client-side round_robin")
for (kind, name), (file, obj) in objects.items():
    if kind == "Service":
        selects_pods(f"{file} Service/{name}", obj["spec"].get("selector"))
        for p in obj["spec"].get("ports", []):
            target = p.get("targetPort", p.get("port"))
            if target not in ports and target not in ports.values():
                error(f"{file} Service/{name}", f"targetPort {target} is no container port")
    if kind == "PodDisruptionBudget":
        selects_pods(f"{file} PodDisruptionBudget/{name}",
                     obj["spec"].get("selector", {}).get("matchLabels"))
if not any(kind == "PodDisruptionBudget" for kind, _ in objects):
    error("pdb.yaml", "no PodDisruptionBudget")

# int-or-string fields: the schema accepts any string; the API wants "N%".
int_or_percent = [("pdb.yaml", f"PodDisruptionBudget {field}", obj["spec"].get(field))
                  for (kind, _), (_, obj) in objects.items() if kind == "PodDisruptionBudget"
                  for field in ("minAvailable", "maxUnavailable")]
int_or_percent += [(D, f"rollingUpdate {field}",
                    spec.get("strategy", {}).get("rollingUpdate", {}).get(field))
                   for field in ("maxSurge", "maxUnavailable")]
for file, field, value in int_or_percent:
    if value is not None and not (isinstance(value, int) or re.fullmatch(r"\d+%", str(value))):
        error(file, f"{field} is {value!r}: use a whole number or a percentage like \"25%\"")

# ------------------------------------------------------------ kustomization
if kustomization is not None:
    listed = set(kustomization.get("resources", []))
    expected = {f for f in os.listdir(directory) if f.endswith(".yaml")} - {
        "kustomization.yaml", "secret.example.yaml"}
    if "secret.example.yaml" in listed:
        error("kustomization.yaml", "must not list secret.example.yaml (placeholders)")
    for missing in sorted(expected - listed):
        error("kustomization.yaml", f"does not list {missing}")
    for extra in sorted(listed - expected - {"secret.example.yaml"}):
        error("kustomization.yaml", f"lists {extra}, which does not exist")

if errors:
    print("\n".join(errors))
sys.exit(1 if errors else 0)
PY
    return $status
}

started=$SECONDS
files=("$target"/*.yaml)
if validate "$target"; then
    echo "validate-k8s: OK: ${#files[@]} files in ${target#"$repo"/} valid against Kubernetes $K8S_VERSIONS (strict)"
else
    echo "validate-k8s: FAILED: invalid manifests in ${target#"$repo"/}" >&2
    exit 1
fi

[ "$self_test" -eq 1 ] || exit 0

# --------------------------------------------------------------- self-test
# Each case breaks one scratch copy one way; the validation must reject it.
# A case whose edit did not apply counts as a failure (it proves nothing).
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# copy_ NAME FILE PERL-SUBSTITUTION: a fresh copy with the substitution
# applied to FILE; fails when the edit did not apply (it would prove nothing).
passed=0 failed=0
copy_() {
    local name=$1 file=$2 edit=$3 copy="$scratch/$1"
    mkdir "$copy"
    cp "$target"/*.yaml "$copy"/
    perl -0pi -e "$edit" "$copy/$file"
    if cmp -s "$target/$file" "$copy/$file"; then
        echo "self-test: FAIL $name: the edit did not apply to $file"
        failed=$((failed + 1))
        return 1
    fi
}
# case_ NAME FILE EDIT: the broken copy must be rejected.
case_() {
    local copy="$scratch/$1"
    copy_ "$@" || return 0
    if validate "$copy" >"$copy.log" 2>&1; then
        echo "self-test: FAIL $1: the broken copy was accepted"
        failed=$((failed + 1))
    else
        echo "self-test: ok   $1 rejected: $(grep -m1 -E '^(ERROR|WARN|FATAL)' "$copy.log" || head -1 "$copy.log")"
        passed=$((passed + 1))
    fi
}
# accept_ NAME FILE EDIT: a documented variant (e.g. TLS on) must stay valid.
accept_() {
    local copy="$scratch/$1"
    copy_ "$@" || return 0
    if validate "$copy" >"$copy.log" 2>&1; then
        echo "self-test: ok   $1 accepted"
        passed=$((passed + 1))
    else
        echo "self-test: FAIL $1: the valid variant was rejected: $(grep -m1 -E '^(ERROR|WARN|FATAL)' "$copy.log" || head -1 "$copy.log")"
        failed=$((failed + 1))
    fi
}

# The edits are perl, single-quoted on purpose ($1 is perl's, not the shell's).
# shellcheck disable=SC2016
{
# Schema layer (strict, pinned versions).
case_ unknown-field     deployment.yaml 's/^  replicas: 3$/  replicas: 3\n  replica: 3/m'
case_ wrong-type        deployment.yaml 's/containerPort: 50051/containerPort: "50051"/'
case_ misspelled-probe  deployment.yaml 's/readinessProbe:/readynessProbe:/'
case_ unknown-api       pdb.yaml        's{apiVersion: policy/v1}{apiVersion: policy/v2}'
case_ bool-in-configmap configmap.yaml  's/RUN_OPS_SPLIT_ENABLED: "0"/RUN_OPS_SPLIT_ENABLED: false/'
# Consistency layer.
case_ duplicate-key     service.yaml    's/^  clusterIP: None$/  clusterIP: None\n  clusterIP: 10.0.0.1/m'
case_ unknown-setting   configmap.yaml  's/RESOLVER_SHUTDOWN_GRACE_MS:/RESOLVER_SHUTDOWN_GRACE_MSS:/'
case_ dsn-in-configmap  configmap.yaml  's/^data:\n/data:\n  RUN_OPS_DATABASE_URL: "postgresql:\/\/x\@y\/z"\n/m'
case_ short-termination deployment.yaml 's/terminationGracePeriodSeconds: 35/terminationGracePeriodSeconds: 25/'
case_ probe-service     deployment.yaml 's/service: controlplane.resolver.v1.ControlPlaneResolverService/service: controlplane.resolver.v1.Resolver/'
case_ probe-port        deployment.yaml 's/(livenessProbe:.*?port:) 8081/$1 8082/s'
# Probes on the API port while RESOLVER_HEALTH_ADDR says 8081: they would
# fail as soon as TLS, mutual TLS or overload reaches port 50051.
case_ probes-on-api-port deployment.yaml 's/\bport: 8081\b/port: 50051/g'
case_ health-addr-moved configmap.yaml  's/RESOLVER_HEALTH_ADDR: "0.0.0.0:8081"/RESOLVER_HEALTH_ADDR: "0.0.0.0:8082"/'
case_ no-health-addr    configmap.yaml  's/^  RESOLVER_HEALTH_ADDR: .*\n//m'
case_ loopback-health   configmap.yaml  's/"0.0.0.0:8081"/"127.0.0.1:8081"/'
case_ port-clash        configmap.yaml  's/0.0.0.0:50051/0.0.0.0:9090/'
# Several processes still take one metrics port (the parent serves them all).
accept_ three-processes configmap.yaml 's/^(  RESOLVER_HEALTH_ADDR:) "0.0.0.0:8081"$/$1 "0.0.0.0:8081"\n  RESOLVER_PROCESSES: "3"/m'
case_ metrics-port      configmap.yaml  's/0.0.0.0:9090/0.0.0.0:9091/'
case_ not-headless      service.yaml    's/^  clusterIP: None\n//m'
case_ int-or-string     pdb.yaml        's/maxUnavailable: 1/maxUnavailable: "one"/'
case_ selector-mismatch pdb.yaml        's/(matchLabels:\n\s+app.kubernetes.io\/name:) controlplane-resolver/$1 other/'
case_ subpath-mount     deployment.yaml 's{(mountPath: /etc/controlplane-resolver/tokens)\n}{$1\n              subPath: tokens\n}'
case_ missing-secret    secret.example.yaml 's/name: controlplane-resolver-tokens/name: controlplane-resolver-tokenz/'
case_ kustomize-list    kustomization.yaml  's/^  - pdb.yaml\n//m'
# TLS as the ConfigMap documents it (uncomment the three lines): valid,
# because the probes do not touch the API port; and a mistyped path is not.
accept_ tls-on          configmap.yaml  's/^  # (RESOLVER_TLS_\w+: .*)$/  $1/mg'
case_ tls-wrong-key     configmap.yaml  's/^  # (RESOLVER_TLS_\w+: .*)$/  $1/mg; s{tls/tls.crt}{tls/tls.pem}'
}

echo "self-test: $passed of $((passed + failed)) cases as expected ($((SECONDS - started)) s in all)"
[ "$failed" -eq 0 ] || exit 1
