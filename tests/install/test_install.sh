#!/usr/bin/env bash
# Installed-tree test (TAP): `meson install --destdir` into a temporary
# directory, then check what was installed and use it: the installed
# programs' --version, the installed man pages (man -l / groff), the
# installed bash completion, and a signing round trip with the installed
# agent and CLI on a fresh SoftHSM token, checked with OpenSSL alone.
#   test_install.sh SRCDIR BUILDDIR
set -uo pipefail

src=${1:?usage: test_install.sh SRCDIR BUILDDIR}
build=${2:?usage: test_install.sh SRCDIR BUILDDIR}
src=$(cd "$src" && pwd -P)
build=$(cd "$build" && pwd -P)

n=0 failed=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
notok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $*"; }
check() { # check DESCRIPTION COMMAND...
	local d=$1; shift
	if "$@"; then ok "$d"; else notok "$d"; return 1; fi
}
diag() { sed 's/^/# /' "$@"; }

tmp=$(mktemp -d /tmp/p11jwt-install.XXXXXX)
agent_pid=
cleanup() {
	[ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
dest=$tmp/root

# ---- install --------------------------------------------------------------
if meson install -C "$build" --destdir "$dest" --no-rebuild --quiet >"$tmp/install.log" 2>&1; then
	ok "meson install --destdir"
else
	notok "meson install --destdir"; diag "$tmp/install.log"
	echo "1..$n"; exit 1
fi

# Where the build says things go (prefix, bindir, mandir, datadir).
opt() {
	/usr/bin/python3 -c 'import json,sys
for o in json.load(sys.stdin):
    if o["name"] == sys.argv[1]: print(o["value"])' "$1" < "$tmp/opts.json"
}
meson introspect "$build" --buildoptions >"$tmp/opts.json"
prefix=$(opt prefix) bindir=$(opt bindir) mandir=$(opt mandir) datadir=$(opt datadir)
libexecdir=$(opt libexecdir)
abs() { case $1 in /*) echo "$dest$1" ;; *) echo "$dest$prefix/$1" ;; esac; }
bin=$(abs "$bindir") man=$(abs "$mandir") libexec=$(abs "$libexecdir")/p11jwt
version=$(meson introspect "$build" --projectinfo |
	/usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')

for f in "$bin/p11jwt" "$bin/p11jwt-agent" "$libexec/p11jwt-admin"; do
	check "installed executable ${f#"$dest"}" test -x "$f" -a -f "$f"
done
check "installed command module ${libexec#"$dest"}/p11jwt-cmds.so" test -f "$libexec/p11jwt-cmds.so"
for f in man1/p11jwt.1 man8/p11jwt-agent.8 man5/p11jwt-profile.5 man5/p11jwt-agent.conf.5; do
	check "installed man page ${man#"$dest"}/$f" test -s "$man/$f"
done
comp=$(find "$dest" -path '*/bash-completion/completions/p11jwt' -type f | head -n 1)
check "installed bash completion (${comp#"$dest"})" test -n "$comp"
check "installed bash completion for p11jwt-agent" \
	test -f "$(dirname "${comp:-/nonexistent}")/p11jwt-agent"
# systemd units (system and user), with ExecStart pointing at the installed agent
for u in system/p11jwt-agent.service system/p11jwt-agent.socket user/p11jwt-agent.service \
	user/p11jwt-agent.socket; do
	f=$(find "$dest" -path "*/systemd/$u" -type f | head -n 1)
	check "installed systemd unit $u" test -n "$f"
done
f=$(find "$dest" -path '*/systemd/system/p11jwt-agent.service' -type f | head -n 1)
check "the system unit starts the installed agent" \
	grep -q "^ExecStart=${bin#"$dest"}/p11jwt-agent --foreground" "${f:-/nonexistent}"
# nothing of the test suite is installed
check "no test programs installed" \
	test -z "$(find "$dest" -name 'test_*' -o -name 'fuzz_*' -o -name 'p11jwt-bench')"

# ---- the installed programs run -------------------------------------------
out=$("$bin/p11jwt" --version 2>&1)
check "installed p11jwt --version is '$out'" test "$out" = "p11jwt $version"
out=$("$bin/p11jwt-agent" --version 2>&1)
check "installed p11jwt-agent --version is '$out'" test "$out" = "p11jwt-agent $version"
# keygen/csr/cert run the installed p11jwt-admin (P11JWT_LIBEXECDIR: the
# destdir is not where the build said it would be)
out=$(P11JWT_LIBEXECDIR="$libexec" "$bin/p11jwt" keygen --help 2>&1 | head -n 1)
check "installed p11jwt keygen runs p11jwt-admin ('$out')" \
	grep -qF 'usage: p11jwt [--socket PATH] keygen --module' <<<"$out"
check "installed p11jwt does not link p11-kit (PKCS#11 stays in p11jwt-admin)" \
	bash -c "! readelf -d '$bin/p11jwt' | grep -q 'libp11-kit'"
check "installed p11jwt does not link libcrypto (it stays in p11jwt-cmds.so)" \
	bash -c "! readelf -d '$bin/p11jwt' | grep -q 'libcrypto'"
# the commands in the module run from the installed tree
out=$(P11JWT_LIBEXECDIR="$libexec" "$bin/p11jwt" token --help 2>&1 | head -n 1)
check "installed p11jwt token loads p11jwt-cmds.so ('$out')" \
	grep -qF 'usage: p11jwt [--socket PATH] token' <<<"$out"
out=$(P11JWT_LIBEXECDIR=/nonexistent "$bin/p11jwt" token --help 2>&1); st=$?
check "without its module, p11jwt token exits 2 and says so ('$out')" \
	bash -c "[ $st = 2 ] && [[ '$out' == *'not_found: cannot load'*'p11jwt-cmds.so'* ]]"
# a module next to the program is taken first: a file that is not a shared
# object, and a shared object that is not our module, are refused
mkdir "$tmp/fake"
cp "$bin/p11jwt" "$tmp/fake/p11jwt"
echo 'not a shared object' >"$tmp/fake/p11jwt-cmds.so"
out=$("$tmp/fake/p11jwt" jwks 2>&1); st=$?
check "a module that is not a shared object: exit 2, not_found ('$out')" \
	bash -c "[ $st = 2 ] && [[ '$out' == 'p11jwt: not_found: cannot load '*'p11jwt-cmds.so'* ]]"
jansson=$(ldd "$bin/p11jwt" | awk '/libjansson/ {print $3}')
cp "$jansson" "$tmp/fake/p11jwt-cmds.so"
out=$("$tmp/fake/p11jwt" jwks 2>&1); st=$?
want="p11jwt: not_found: $tmp/fake/p11jwt-cmds.so is not p11jwt $version's command module"
check "a shared object without our entry points: exit 2, not_found" \
	test "$st:$out" = "2:$want" || diag <<<"$out"
# they do not load anything from the build tree
check "installed p11jwt has no build-tree RUNPATH" \
	bash -c "! readelf -d '$bin/p11jwt' | grep -q '$build'"

# ---- man pages -------------------------------------------------------------
for f in man1/p11jwt.1 man8/p11jwt-agent.8 man5/p11jwt-profile.5 man5/p11jwt-agent.conf.5; do
	page=$man/$f name=$(basename "$f"); sect=${name##*.} name=${name%.*}
	check "$f has .TH \"$name\" \"$sect\"" grep -q "^\.TH \"$name\" \"$sect\"" "$page"
	if command -v man >/dev/null 2>&1; then
		MANWIDTH=80 MANPAGER=cat man -l "$page" >"$tmp/page.txt" 2>"$tmp/page.err"
	elif command -v mandoc >/dev/null 2>&1; then
		mandoc -Tutf8 "$page" >"$tmp/page.txt" 2>"$tmp/page.err"
	elif command -v groff >/dev/null 2>&1; then
		groff -t -man -Tutf8 "$page" >"$tmp/page.txt" 2>"$tmp/page.err"
	else
		n=$((n + 1)); echo "ok $n - $f renders # SKIP no man, mandoc or groff"
		continue
	fi
	check "$f renders, with NAME, SEE ALSO and its name" \
		bash -c "grep -q '^NAME' '$tmp/page.txt' && grep -q '^SEE ALSO' '$tmp/page.txt' && grep -q '$name' '$tmp/page.txt'"
	if command -v groff >/dev/null 2>&1; then
		groff -t -man -Tutf8 -ww -z "$page" >"$tmp/groff.err" 2>&1
		check "$f: groff -ww prints no warning" test ! -s "$tmp/groff.err" || diag "$tmp/groff.err"
	fi
done

# ---- bash completion (with the installed p11jwt) ---------------------------
check "completion parses (bash -n)" bash -n "$comp"
out=$(bash -c 'source "$1"; COMP_WORDS=("$2" ""); COMP_CWORD=1; _p11jwt; echo "${COMPREPLY[*]}"' \
	_ "$comp" "$bin/p11jwt" 2>&1)
check "completion lists the commands of the installed p11jwt ($out)" \
	bash -c "[[ ' $out ' == *' token '* && ' $out ' == *' jwks '* && ' $out ' == *' cache '* ]]"
out=$(bash -c 'source "$1"; COMP_WORDS=("$2" call --no-c); COMP_CWORD=2; _p11jwt; echo "${COMPREPLY[*]}"' \
	_ "$comp" "$bin/p11jwt" 2>&1)
check "completion completes call --no-c to --no-cache ($out)" test "$out" = "--no-cache"
out=$(bash -c 'source "$1"; COMP_WORDS=("$2" token --preset ok); COMP_CWORD=3; _p11jwt; echo "${COMPREPLY[*]}"' \
	_ "$comp" "$bin/p11jwt" 2>&1)
check "completion completes --preset ok to okta ($out)" test "$out" = "okta"

# ---- round trip on a fresh SoftHSM token -----------------------------------
module=${P11JWT_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
if [ ! -r "$module" ] || ! command -v pkcs11-tool >/dev/null || ! command -v certtool >/dev/null; then
	n=$((n + 1)); echo "ok $n - round trip # SKIP SoftHSM2, OpenSC or GnuTLS tools missing"
	echo "1..$n"; exit $((failed > 0))
fi
if "$src/softhsm-conf/mktoken" "$tmp/token" >"$tmp/mktoken.log" 2>&1; then
	ok "mktoken made a fresh token"
else
	notok "mktoken made a fresh token"; diag "$tmp/mktoken.log"
	echo "1..$n"; exit 1
fi
export SOFTHSM2_CONF=$tmp/token/softhsm2.conf
export P11JWT_LIBEXECDIR=$libexec # keys and jwks are in p11jwt-cmds.so
mkdir -m 0700 "$tmp/run"
sock=$tmp/run/agent.sock
unset P11JWT_AGENT_SOCK P11JWT_AGENT_PID P11JWT_PIN

# the audit trail in a file: in the background there is no stderr, and a
# build machine may have no syslog daemon
if "$bin/p11jwt-agent" --print-env --module "$module" --token 'pkcs11:token=p11jwt-test' \
	--pin-file "$tmp/token/pin" --socket "$sock" --audit "file:$tmp/run/audit.log" \
	>"$tmp/env.sh" 2>"$tmp/agent.err"; then
	ok "installed agent starts (--print-env)"
else
	notok "installed agent starts (--print-env)"; diag "$tmp/agent.err"
	echo "1..$n"; exit 1
fi
eval "$(grep -v '^echo' "$tmp/env.sh")"
agent_pid=${P11JWT_AGENT_PID:-}
check "--print-env names the socket and a live pid" \
	bash -c "[ '$P11JWT_AGENT_SOCK' = '$sock' ] && kill -0 '$agent_pid'"
check "socket is a socket, mode 0600, in a 0700 directory" \
	bash -c "[ -S '$sock' ] && [ \"\$(stat -c %a '$sock')\" = 600 ] && [ \"\$(stat -c %a '$tmp/run')\" = 700 ]"

"$bin/p11jwt" keys >"$tmp/keys.txt" 2>&1
check "installed p11jwt keys lists rsa-2048 and ec-p256" \
	bash -c "grep -q '^rsa-2048 ' '$tmp/keys.txt' && grep -q '^ec-p256 ' '$tmp/keys.txt'" || diag "$tmp/keys.txt"

for ka in rsa-2048:RS256 rsa-2048:PS512 ec-p256:ES256 ec-p384:ES384; do
	key=${ka%%:*} alg=${ka#*:}
	"$bin/p11jwt" jwks --key "$key" --pem >"$tmp/$key.pem" 2>"$tmp/err"
	jwt=$("$bin/p11jwt" sign --key "$key" --alg "$alg" --claim iss=install-test \
		--claim aud=https://example.invalid/token --lifetime 60 2>"$tmp/err")
	check "sign $key $alg with the installed CLI, verified by OpenSSL" \
		"$src/tests/tools/jwt-openssl-verify" "$jwt" "$tmp/$key.pem" || diag "$tmp/err"
done
# the verifier can fail: a JWT with another payload must not verify
bad=$(printf '%s' "$jwt" | awk -F. '{print $1 ".eyJpc3MiOiJldmlsIn0." $3}')
check "OpenSSL rejects a JWT with a changed payload" \
	bash -c "! '$src/tests/tools/jwt-openssl-verify' '$bad' '$tmp/ec-p384.pem' 2>/dev/null"

"$bin/p11jwt-agent" --kill >/dev/null 2>&1
gone=no
for _ in $(seq 50); do
	if ! kill -0 "$agent_pid" 2>/dev/null; then gone=yes; break; fi
	sleep 0.1
done
check "p11jwt-agent --kill stops the agent" test $gone = yes
check "the socket is removed on exit" test ! -e "$sock"
[ $gone = yes ] && agent_pid=

echo "1..$n"
exit $((failed > 0))
