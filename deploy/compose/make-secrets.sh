#!/usr/bin/env bash
# Create the secret files compose.yaml mounts (random values; existing files are kept).
#
#   bash deploy/compose/make-secrets.sh [DIR]     (default: deploy/compose/secrets, or
#                                                  $CALLANNOTATE_SECRETS_DIR)
#
# The folder is made mode 0700 (only its owner can open it); the files are 0444 so that every
# container reads them whatever its user id (a Compose file secret is a bind mount of the file,
# outside the folder). Back them up with the data (docs/deployment.md, "Backup and restore"):
# without master_key the encrypted recordings and results cannot be read.
set -euo pipefail

DIR=${1:-${CALLANNOTATE_SECRETS_DIR:-$(dirname "$0")/secrets}}
mkdir -p "$DIR"
chmod 0700 "$DIR"

random() { # random NBYTES: URL-safe base64 without padding
  head -c "$1" /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d '='
}

put() { # put NAME VALUE: write the file unless it exists
  local path=$DIR/$1
  if [[ -s $path ]]; then
    echo "make-secrets: $path exists, kept"
    return 0
  fi
  (umask 0222 && printf '%s\n' "$2" >"$path")
  echo "make-secrets: wrote $path"
}

put postgres_password "$(random 24)"
put jwt_secret "$(random 48)"                                # HS256 key, >= 32 bytes
put master_key "$(head -c 32 /dev/urandom | base64 -w0)"     # base64 of 32 bytes
put callback_secret "$(random 32)"
put metrics_token "$(random 32)"
# Alertmanager's SMTP password (deploy/alertmanager/alertmanager.yml): yours, not random
put alertmanager_smtp_password "replace-with-the-smtp-password"
