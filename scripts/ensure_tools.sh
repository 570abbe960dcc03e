#!/bin/sh
# Best effort: install the Debian packages some tests use when they are missing — chromium (the
# /ops page in a real browser), prometheus (promtool) and docker-compose (`docker-compose
# config` over deploy/docker-compose.yml, where Docker's compose plugin is absent) — and wrk
# for `make bench` (P1). Only as root with apt-get; never fails: without them those tests skip
# and say why. Silent when everything is present.

# HL7's published FHIR R4 example Patients (the npm package hl7.fhir.r4.examples, the one
# the FHIR package registry serves too), which tests/patients/test_published_patients.py maps: fetched
# once into .cache/, the Patient files only. Best effort, like the rest.
EXAMPLES=".cache/hl7.fhir.r4.examples-4.0.1"
if [ ! -d "$EXAMPLES/package" ] && command -v npm >/dev/null 2>&1; then
    scratch=$(mktemp -d)
    if (cd "$scratch" && npm pack --silent hl7.fhir.r4.examples@4.0.1 >/dev/null 2>&1) &&
        mkdir -p "$EXAMPLES" &&
        tar xzf "$scratch"/hl7.fhir.r4.examples-4.0.1.tgz -C "$EXAMPLES" --wildcards 'package/Patient-*.json'; then
        echo "ensure_tools: HL7's FHIR R4 example Patients are in $EXAMPLES"
    else
        echo "ensure_tools: could not fetch hl7.fhir.r4.examples with npm; tests/patients/test_published_patients.py will skip"
    fi
    rm -rf "$scratch"
fi

missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 ||
    missing="$missing docker-compose"
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_tools: missing:$missing; not root or no apt-get, so not installed (the tests that need them will skip)"
    exit 0
fi

echo "ensure_tools: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086  # $missing is a list of package names
if ! apt-get install -y --no-install-recommends $missing >/dev/null 2>&1; then
    # Package lists may be absent or stale on a fresh machine.
    if ! { apt-get update -qq >/dev/null 2>&1 &&
        apt-get install -y --no-install-recommends $missing >/dev/null 2>&1; }; then
        echo "ensure_tools: could not install$missing (apt-get failed); the tests that need them will skip"
    fi
fi
exit 0
