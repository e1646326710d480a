#!/usr/bin/env bash
# The project's one test command, for a developer and for CI alike:
#
#   bash scripts/test.sh [pytest args...]
#
# On a fresh clone with only python3 (>= 3.11) present it creates .venv, installs the package
# with its dev extras, starts the real services (PostgreSQL, Redis, Kafka: scripts/services.sh,
# left running for the next run; `bash scripts/services.sh down` stops them), then runs
# ruff, import-linter, mypy and the whole pytest suite (unit and integration) against them, then
# builds the stream core with mypyc and runs the unit tests against the compiled modules too.
# Exits non-zero when any of these fails, or when pytest collected no test at all.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf '[test] %s\n' "$*" >&2; }

PYTHON=${PYTHON:-python3}
VENV=.venv

# --- the virtualenv: created once, (re)installed when pyproject.toml changes ---------------------
if [ ! -x "$VENV/bin/python" ]; then
	"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
		{ log "Python >= 3.11 is needed; $PYTHON is $("$PYTHON" --version 2>&1)"; exit 1; }
	log "creating $VENV with $("$PYTHON" --version 2>&1)"
	"$PYTHON" -m venv "$VENV" || {
		rm -rf "$VENV"
		log "'$PYTHON -m venv' failed (on Debian's own python3: apt-get install python3-venv)"
		exit 1
	}
fi
stamp=$VENV/.metrify-installed
want=$(sha256sum pyproject.toml | cut -d" " -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VENV/bin/python" -c 'import metrify' 2>/dev/null; then
	log "installing metrify and its dev tools into $VENV"
	rm -f "$stamp"
	"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]' </dev/null
	echo "$want" >"$stamp"
fi

# --- the real services ----------------------------------------------------------------------------
services_env=$(bash scripts/services.sh up </dev/null)
eval "$services_env"
log "services: $(printf '%s ' "$services_env" | sed 's/export //g')"

# --- checks ---------------------------------------------------------------------------------------
failed=()
log "ruff check src tests"
"$VENV/bin/ruff" check src tests || failed+=(ruff)

log "lint-imports (layer contracts in pyproject.toml)"
"$VENV/bin/lint-imports" || failed+=(import-linter)

log "mypy (the types of src; settings in pyproject.toml)"
"$VENV/bin/mypy" || failed+=(mypy)

log "pytest $*"
rc=0
"$VENV/bin/python" -m pytest "$@" || rc=$?
if [ $rc -eq 5 ]; then
	log "pytest collected no tests: that is a failure here (a suite that runs nothing proves nothing)"
	failed+=("pytest (no tests collected)")
elif [ $rc -ne 0 ]; then
	failed+=("pytest (exit $rc)")
fi

# --- the optional native build of the stream core (scripts/build_native.sh): built, the unit tests
# run against the compiled modules, then removed again unless it was there before ----------------
if [ "${METRIFY_TEST_NATIVE:-1}" = 1 ]; then
	log "stream core compiled with mypyc: tests/unit against it (METRIFY_TEST_NATIVE=0 skips this)"
	had_native=0
	[ -f src/metrify/domain/stream/_native.stamp ] && had_native=1
	if PYTHON="$PWD/$VENV/bin/python" bash scripts/build_native.sh &&
		"$VENV/bin/python" -c 'import metrify.domain.stream as s, sys; sys.exit(not s.COMPILED)'; then
		"$VENV/bin/python" -m pytest tests/unit -q || failed+=("pytest tests/unit (compiled stream core)")
	else
		failed+=("native build of the stream core")
	fi
	[ $had_native = 1 ] || bash scripts/build_native.sh --clean >/dev/null
fi

if [ ${#failed[@]} -gt 0 ]; then
	log "FAILED: ${failed[*]}"
	exit 1
fi
log "all checks passed"
