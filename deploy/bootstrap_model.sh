#!/bin/sh
# One-shot job of the `train` image (compose service `model-init`): make sure the model
# repository holds a servable bundle of the default model, training and exporting one if not.
#
#   TEXTCLF_MODEL_REPOSITORY  the model volume                  (default /models)
#   TEXTCLF_DEFAULT_MODEL     model name to publish             (default news)
#   TEXTCLF_RUN_DIR           training run directory            (default /runs/news)
#   TEXTCLF_TRAIN_ARGS        extra `textclf train` arguments   (default none)
#   TEXTCLF_FORCE_BOOTSTRAP   1: train and export even when a bundle exists
#
# Exit 0 when a bundle is present (already, or newly published); non-zero otherwise, so that
# `depends_on: condition: service_completed_successfully` keeps the servers from starting on an
# empty repository.
set -eu

repo="${TEXTCLF_MODEL_REPOSITORY:-/models}"
name="${TEXTCLF_DEFAULT_MODEL:-news}"
run_dir="${TEXTCLF_RUN_DIR:-/runs/$name}"

has_bundle() {
  # <repo>/<name>/<version>/model.json, ignoring hidden staging directories
  find "$repo" -mindepth 3 -maxdepth 3 -name model.json -path "$repo/[a-z0-9]*/[1-9]*/model.json" \
    2>/dev/null | grep -q .
}

mkdir -p "$repo" "$run_dir"
if has_bundle && [ "${TEXTCLF_FORCE_BOOTSTRAP:-0}" != "1" ]; then
  echo "[model-init] $repo already holds a bundle; nothing to do"
  find "$repo" -mindepth 3 -maxdepth 3 -name model.json -path "$repo/[a-z0-9]*/[1-9]*/model.json"
  exit 0
fi

echo "[model-init] training the default model into $run_dir"
# shellcheck disable=SC2086  # TEXTCLF_TRAIN_ARGS is a list of words on purpose
textclf train --run-dir "$run_dir" --no-progress ${TEXTCLF_TRAIN_ARGS:-}

echo "[model-init] exporting $run_dir/best.pt to $repo/$name (parity runs before publishing)"
textclf export "$run_dir/best.pt" --repository "$repo" --name "$name"

if ! has_bundle; then
  echo "[model-init] export finished but $repo holds no bundle" >&2
  exit 1
fi
echo "[model-init] done"
