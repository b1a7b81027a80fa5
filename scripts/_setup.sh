# Sourced by scripts/demo and scripts/test: brings a fresh machine to a
# working checkout. Idempotent; each step is skipped when already done.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STANCHION_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

# System packages the test suite needs: redis-server (Redis tests),
# memcached (Memcached tests), clang-format (C style check), valgrind
# (the log parser under memcheck).
# Debian/Ubuntu names.
ensure_system_packages() {
	local missing=()
	command -v redis-server >/dev/null || missing+=(redis-server)
	command -v clang-format >/dev/null || missing+=(clang-format)
	# the GoAccess peer of benchmarks/logparse.py
	command -v goaccess >/dev/null || missing+=(goaccess)
	command -v memcached >/dev/null || missing+=(memcached)
	command -v openssl >/dev/null || missing+=(openssl)
	# the log parser's fuzz harness under memcheck
	command -v valgrind >/dev/null || missing+=(valgrind)
	[ ${#missing[@]} -eq 0 ] && return 0
	local sudo=""
	[ "$(id -u)" -ne 0 ] && sudo="sudo"
	echo "installing ${missing[*]} with apt-get" >&2
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The virtual environment with the package (built from source) and the
# extras named in $1 (e.g. "all").
ensure_venv() {
	local extras="$1"
	if [ ! -x "$PY" ]; then
		python3 -m venv "$VENV"
		"$PY" -m pip install -q --upgrade pip "setuptools>=77" wheel
	fi
	"$PY" -m pip install -q -e "$ROOT[$extras]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
	"$PY" -c "import stanchion._core" # fails loudly if the build failed
}
