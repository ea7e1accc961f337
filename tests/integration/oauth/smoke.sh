#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# smoke.sh P11JWT_CLI
#
# Manual end-to-end check of server.mjs against a running p11jwt-agent
# (P11JWT_AGENT_SOCK must point at an agent serving the mktoken test token).
# Starts the server on an ephemeral 127.0.0.1 port, exercises every client
# auth alg, the jwt-bearer + refresh round trip, /api/echo, /test/*, and the
# enriched error descriptions. Needs curl and jq. Exit 0 = all checks passed.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
P=${1:?usage: smoke.sh PATH/TO/p11jwt}
: "${P11JWT_AGENT_SOCK:?P11JWT_AGENT_SOCK not set}"
work=$(mktemp -d)
fails=0
server_pid=

cleanup() {
	[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { # check DESC ACTUAL EXPECTED
	if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: got '$2', want '$3'"; fi
}
check_match() { # check_match DESC ACTUAL REGEX
	if [[ $2 =~ $3 ]]; then ok "$1: $2"; else bad "$1: '$2' !~ /$3/"; fi
}

# alg key pairs for client_credentials clients
pairs="RS256:rsa-2048 RS384:rsa-2048 RS512:rsa-2048 PS256:rsa-2048 PS384:rsa-2048
PS512:rsa-2048 ES256:ec-p256 ES384:ec-p384 ES512:ec-p521 EdDSA:ed25519"

clients='[]'
for pr in $pairs; do
	alg=${pr%%:*} key=${pr#*:}
	id="cc-$(echo "$alg" | tr 'A-Z' 'a-z')"
	jwks=$("$P" jwks --key "$key" --alg "$alg") || { bad "jwks $key $alg"; continue; }
	clients=$(jq -c --arg id "$id" --argjson jwks "$jwks" \
		'. + [{client_id: $id, jwks: $jwks, grant: "client_credentials", ttl: 600}]' <<<"$clients")
done
for pr in ES256:ec-p256 EdDSA:ed25519; do
	alg=${pr%%:*} key=${pr#*:}
	id="bearer-$(echo "$alg" | tr 'A-Z' 'a-z')"
	jwks=$("$P" jwks --key "$key" --alg "$alg")
	clients=$(jq -c --arg id "$id" --argjson jwks "$jwks" \
		'. + [{client_id: $id, jwks: $jwks, grant: "jwt-bearer", ttl: 600}]' <<<"$clients")
done
jq -n --argjson c "$clients" '{port: 0, clients: $c}' >"$work/config.json"

mkfifo "$work/out"
node "$here/server.mjs" "$work/config.json" >"$work/out" 2>"$work/server.log" &
server_pid=$!
read -r line <"$work/out" || { cat "$work/server.log"; exit 1; }
# keep the fifo drained
cat "$work/out" >/dev/null &
check_match "ready line" "$line" '^listening http://127\.0\.0\.1:[0-9]+$'
base=${line#listening }
tok="$base/token"

cc_token() { # cc_token CLIENT ALG KEY [extra sign args...] -> response JSON
	local id=$1 alg=$2 key=$3; shift 3
	local jwt
	jwt=$("$P" sign --key "$key" --alg "$alg" --claim "iss=$id" --claim "sub=$id" --claim "aud=$tok" "$@")
	curl -s "$tok" -d grant_type=client_credentials \
		-d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
		-d "client_assertion=$jwt" -d 'scope=api:read api:write'
}

echo "# client_credentials + private_key_jwt, every alg"
for pr in $pairs; do
	alg=${pr%%:*} key=${pr#*:}
	id="cc-$(echo "$alg" | tr 'A-Z' 'a-z')"
	r=$(cc_token "$id" "$alg" "$key")
	at=$(jq -r '.access_token // empty' <<<"$r")
	if [ -n "$at" ] && [ "$(jq -r .scope <<<"$r")" = "api:read api:write" ]; then
		ok "$alg: $(jq -c '{token_type, expires_in, scope}' <<<"$r")"
	else
		bad "$alg: $r"
	fi
done

echo "# /api/echo"
r=$(cc_token cc-es256 ES256 ec-p256)
at=$(jq -r .access_token <<<"$r")
e=$(curl -s "$base/api/echo" -H "Authorization: Bearer $at")
check "echo GET" "$(jq -c . <<<"$e")" '{"ok":true,"client_id":"cc-es256","sub":null,"method":"GET","body":null}'
e=$(curl -s "$base/api/echo" -H "Authorization: Bearer $at" -H 'content-type: text/plain' --data-binary 'hello world')
check "echo POST" "$(jq -c '[.method,.body]' <<<"$e")" '["POST","hello world"]'
code=$(curl -s -o "$work/b" -D "$work/h" -w '%{http_code}' "$base/api/echo" -H "Authorization: Bearer nope")
check "echo bad token status" "$code" 401
check "echo bad token body" "$(cat "$work/b")" '{"error":"invalid_token"}'
check_match "echo bad token header" "$(grep -i '^www-authenticate' "$work/h" | tr -d '\r')" 'Bearer error="invalid_token"'
code=$(curl -s -o /dev/null -w '%{http_code}' "$base/api/echo")
check "echo no token" "$code" 401

echo "# error descriptions"
r=$(cc_token cc-es256 ES256 ec-p256 --claim aud=http://127.0.0.1:1/wrong)
check_match "wrong aud" "$(jq -r '.error + ": " + .error_description' <<<"$r")" '^invalid_client: .*aud'
r=$(cc_token cc-es256 ES256 ec-p256 --claim exp:=1000000000 --claim iat:=999999000)
check_match "expired" "$(jq -r '.error + ": " + .error_description' <<<"$r")" '^invalid_client: .*(exp|timestamp)'
jwt=$("$P" sign --key ec-p256 --alg ES256 --claim iss=cc-es256 --claim sub=cc-es256 --claim "aud=$tok")
post_cc() { curl -s "$tok" -d grant_type=client_credentials \
	-d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
	-d "client_assertion=$1" -d scope=api:read; }
r=$(post_cc "$jwt")
check "replay: first use" "$(jq -r '.token_type' <<<"$r")" Bearer
r=$(post_cc "$jwt")
check_match "replay: second use" "$(jq -r '.error + ": " + .error_description' <<<"$r")" '^invalid_client: .*once'
r=$(cc_token cc-es256 ES256 ec-p256 --header kid=unknown-kid)
check_match "unknown kid" "$(jq -r '.error + ": " + .error_description' <<<"$r")" '^invalid_client: .*key'
r=$(cc_token cc-es256 ES384 ec-p384)
check_match "wrong key" "$(jq -r '.error + ": " + .error_description' <<<"$r")" '^invalid_client: '

echo "# jwt-bearer + refresh"
for pr in ES256:ec-p256 EdDSA:ed25519; do
	alg=${pr%%:*} key=${pr#*:}
	id="bearer-$(echo "$alg" | tr 'A-Z' 'a-z')"
	a=$("$P" sign --key "$key" --alg "$alg" --claim "iss=$id" --claim sub=alice --claim "aud=$tok")
	r=$(curl -s "$tok" -d "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer" -d "client_id=$id" \
		-d "assertion=$a" -d 'scope=api:read')
	check "$alg bearer response keys" "$(jq -c '[keys[], .token_type, .scope]' <<<"$r")" \
		'["access_token","expires_in","refresh_token","scope","token_type","Bearer","api:read"]'
	at=$(jq -r .access_token <<<"$r") rt=$(jq -r .refresh_token <<<"$r")
	check "$alg bearer echo sub" "$(curl -s "$base/api/echo" -H "Authorization: Bearer $at" | jq -c '[.client_id,.sub]')" "[\"$id\",\"alice\"]"
	r=$(curl -s "$tok" -d "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer" -d "client_id=$id" -d "assertion=$a")
	check_match "$alg bearer replay" "$(jq -r '.error + ": " + .error_description' <<<"$r")" '^invalid_grant: assertion jti replayed'
	r2=$(curl -s "$tok" -d grant_type=refresh_token -d "refresh_token=$rt" -d "client_id=$id")
	at2=$(jq -r '.access_token // empty' <<<"$r2") rt2=$(jq -r '.refresh_token // empty' <<<"$r2")
	if [ -n "$at2" ] && [ "$at2" != "$at" ]; then ok "$alg refresh: $(jq -c '{token_type,expires_in,scope}' <<<"$r2")"; else bad "$alg refresh: $r2"; fi
	[ -n "$rt2" ] && [ "$rt2" != "$rt" ] && ok "$alg refresh token rotated" || bad "$alg refresh token not rotated"
	check "$alg refreshed echo sub" "$(curl -s "$base/api/echo" -H "Authorization: Bearer $at2" | jq -r .sub)" alice
	r3=$(curl -s "$tok" -d grant_type=refresh_token -d "refresh_token=$rt2" -d "client_id=$id")
	check "$alg second refresh" "$(jq -r .token_type <<<"$r3")" Bearer
	bearer_at=$(jq -r .access_token <<<"$r3") bearer_rt=$(jq -r .refresh_token <<<"$r3") bearer_id=$id
done
a=$("$P" sign --key ec-p256 --alg ES256 --claim iss=bearer-es256 --claim sub=alice --claim aud=http://127.0.0.1:1/token)
r=$(curl -s "$tok" -d "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer" -d client_id=bearer-es256 -d "assertion=$a")
check_match "bearer wrong aud" "$(jq -r '.error + ": " + .error_description' <<<"$r")" '^invalid_grant: assertion aud mismatch: expected '
a=$("$P" sign --key ec-p256 --alg ES256 --claim iss=bearer-es256 --claim sub=alice --claim "aud=$tok" --claim exp:=1000000000 --claim iat:=999999000)
r=$(curl -s "$tok" -d "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer" -d client_id=bearer-es256 -d "assertion=$a")
check_match "bearer expired" "$(jq -r '.error + ": " + .error_description' <<<"$r")" '^invalid_grant: assertion expired'
a=$("$P" sign --key ec-p256 --alg ES256 --claim iss=bearer-es256 --claim sub=alice --claim "aud=$tok" --header kid=nope)
r=$(curl -s "$tok" -d "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer" -d client_id=bearer-es256 -d "assertion=$a")
check_match "bearer unknown kid" "$(jq -r '.error + ": " + .error_description' <<<"$r")" '^invalid_grant: assertion key not found'
a=$("$P" sign --key ec-p256 --alg ES256 --claim iss=bearer-es256 --claim "aud=$tok")
r=$(curl -s "$tok" -d "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer" -d client_id=bearer-es256 -d "assertion=$a")
check_match "bearer no sub" "$(jq -r '.error + ": " + .error_description' <<<"$r")" '^invalid_grant: assertion sub missing'
a=$("$P" sign --key ec-p256 --alg ES256 --claim iss=someone-else --claim sub=alice --claim "aud=$tok")
r=$(curl -s "$tok" -d "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer" -d client_id=bearer-es256 -d "assertion=$a")
check_match "bearer wrong iss" "$(jq -r '.error + ": " + .error_description' <<<"$r")" '^invalid_grant: assertion iss mismatch'

echo "# /test/revoke"
cc_at=$(cc_token cc-rs256 RS256 rsa-2048 | jq -r .access_token)
check "cc token valid before revoke" "$(curl -s -o /dev/null -w '%{http_code}' "$base/api/echo" -H "Authorization: Bearer $cc_at")" 200
curl -s -X POST "$base/test/revoke" >/dev/null
check "cc token after revoke" "$(curl -s -o /dev/null -w '%{http_code}' "$base/api/echo" -H "Authorization: Bearer $cc_at")" 401
check "bearer token after revoke" "$(curl -s -o /dev/null -w '%{http_code}' "$base/api/echo" -H "Authorization: Bearer $bearer_at")" 401
r=$(curl -s "$tok" -d grant_type=refresh_token -d "refresh_token=$bearer_rt" -d "client_id=$bearer_id")
at=$(jq -r '.access_token // empty' <<<"$r")
check "refresh after revoke" "$(curl -s -o /dev/null -w '%{http_code}' "$base/api/echo" -H "Authorization: Bearer $at")" 200
cc_at=$(cc_token cc-rs256 RS256 rsa-2048 | jq -r .access_token)
check "new cc token after revoke" "$(curl -s -o /dev/null -w '%{http_code}' "$base/api/echo" -H "Authorization: Bearer $cc_at")" 200

echo "# counters and mode"
curl -s -X POST "$base/test/reset" >/dev/null
check "reset" "$(curl -s "$base/test/stats" | jq -c .)" \
	'{"token_requests":0,"by_grant":{"client_credentials":0,"urn:ietf:params:oauth:grant-type:jwt-bearer":0,"refresh_token":0},"api_requests":0,"api_401":0}'
cc_token cc-es256 ES256 ec-p256 >/dev/null
cc_token cc-es256 ES256 ec-p256 --claim aud=wrong >/dev/null
curl -s "$tok" -d grant_type=refresh_token -d refresh_token=bogus -d client_id=bearer-es256 >/dev/null
curl -s "$base/api/echo" -H "Authorization: Bearer $cc_at" >/dev/null
curl -s "$base/api/echo" >/dev/null
check "stats" "$(curl -s "$base/test/stats" | jq -c .)" \
	'{"token_requests":3,"by_grant":{"client_credentials":2,"urn:ietf:params:oauth:grant-type:jwt-bearer":0,"refresh_token":1},"api_requests":2,"api_401":1}'
curl -s "$base/test/mode" -H 'content-type: application/json' -d '{"token_delay_ms": 700}' >/dev/null
t0=$(date +%s%N)
cc_token cc-es256 ES256 ec-p256 >/dev/null
ms=$((($(date +%s%N) - t0) / 1000000))
[ "$ms" -ge 700 ] && ok "token_delay_ms 700 -> ${ms} ms" || bad "token delay: only ${ms} ms"
curl -s "$base/test/mode" -d '{"token_delay_ms": 0}' >/dev/null

echo "# SIGTERM"
kill -TERM "$server_pid"
wait "$server_pid"
check "exit status on SIGTERM" "$?" 0
server_pid=

if [ "$fails" -ne 0 ]; then
	echo "$fails check(s) failed; server log:"
	cat "$work/server.log"
	exit 1
fi
echo "all checks passed"
