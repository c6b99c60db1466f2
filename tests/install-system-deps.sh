#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Slurm and MUNGE (the throwaway cluster in
# tests/slurm_cluster.py), shellcheck, and Chromium (opens `orchestrator compare --html` reports in
# tests/browser.py). Installs only what is missing, with apt-get, as root. Without root or apt-get
# it says the Slurm and browser tests will be skipped (they fail under CI=true) and exits 0; it
# exits non-zero only when an install it attempted failed.
set -euo pipefail

# command -> Debian package that provides it
declare -A package_of=(
  [sbatch]=slurm-wlm
  [slurmctld]=slurm-wlm
  [slurmd]=slurm-wlm
  [munged]=munge
  [shellcheck]=shellcheck
  [chromium]=chromium
)

missing=()
for cmd in sbatch slurmctld slurmd munged shellcheck chromium; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    pkg=${package_of[$cmd]}
    [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: missing ${missing[*]} (needs root and apt-get): the Slurm and browser tests will be skipped (they fail under CI=true)" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-system-deps: installed ${missing[*]}"
