# Sourced by the scripts: one cargo target directory outside the checkout, reused by every
# build and by CI (a cold build of the full stack takes tens of minutes on 2 cores).
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  if [ -d /work ] && [ -w /work ]; then
    export CARGO_TARGET_DIR=/work/target
  else
    export CARGO_TARGET_DIR="$HOME/.cache/loupe/target"
  fi
fi
export LOUPE_HOME="${LOUPE_HOME:-$HOME/.cache/loupe}"
