/* SPDX-License-Identifier: MIT */
/*
 * The protocol handler's fast path (agent/proto-fast.c) against its Jansson
 * path: a table of request lines, valid, edge and hostile, each run both
 * ways (tests/support/fastdiff.c) with the clock, the random bytes and the
 * signatures fixed; the answers, results and audit lines must be the same
 * bytes. The rows marked 'y' must be taken by the fast path (so that it
 * cannot pass by declining everything), the 'n' rows must be declined;
 * then every row again with each byte deleted, and with bytes changed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "support/fastdiff.h"

#define J(...) #__VA_ARGS__
#define ATH "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
#define BENCH                                                                              \
	J({"op":"sign","key":"p256","alg":"ES256","claims":{"iss":"bench","sub":"bench","aud":"https://x"}})
#define PROOF                                                                              \
	J({"op":"dpop","key":"p256","alg":"ES256","htm":"GET","htu":"https://api.example.com/v1/items/1000","ath":"fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"})

typedef struct {
	char take; /* 'y': the fast path answers, 'n': it declines, '?': either */
	int peer;
	int fail;
	bool rescan;
	const char *line;
} row;

static const row rows[] = {
	/* what the bench, the CLI and the usual clients send */
	{ 'y', FD_OWNER, 0, 0, BENCH },
	{ 'y', FD_OWNER, 0, 0, PROOF },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256"}) },
	{ 'y', FD_OWNER, 0, 0, J({"key":"p256","op":"sign"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","lifetime":120}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","lifetime":1}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","lifetime":3600}) },
	{ 'y', FD_ROOT, 0, 0, BENCH },
	{ 'y', FD_NOPEER, 0, 0, BENCH },
	{ 'y', FD_ROOT, 0, 0, PROOF },
	{ 'y', FD_NOPEER, 0, 0, PROOF },
	/* every alg */
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"rsa"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"rsa","alg":"RS384"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"rsa","alg":"RS512"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"rsa","alg":"PS256"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"rsa","alg":"PS384"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"rsa","alg":"PS512"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p384"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p384","alg":"ES384"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p521","alg":"ES512"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"ed","alg":"EdDSA"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"rsapss"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"rsapss","alg":"PS512"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"dpop","key":"ed","htm":"POST","htu":"https://a.example/t"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"dpop","key":"rsa","alg":"PS256","htm":"POST","htu":"https://a/"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"dpop","key":"p521","htm":"GET","htu":"http://h"}) },
	/* ids of every kind, anywhere */
	{ 'y', FD_OWNER, 0, 0, J({"id":7,"op":"sign","key":"p256"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","id":-0}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","id":-12,"key":"p256"}) },
	{ 'y', FD_OWNER, 0, 0, J({"id":"abc","op":"sign","key":"p256"}) },
	{ 'y', FD_OWNER, 0, 0, J({"id":"","op":"sign","key":"p256"}) },
	{ 'y', FD_OWNER, 0, 0, J({"id":null,"op":"sign","key":"p256"}) },
	{ 'y', FD_OWNER, 0, 0, J({"id":true,"op":"sign","key":"p256"}) },
	{ 'y', FD_OWNER, 0, 0, J({"id":false,"op":"dpop","key":"p256","htm":"GET","htu":"https://x"}) },
	{ 'y', FD_OWNER, 0, 0, J({"id":{"a":[1,{"b":null}],"c":"d"},"op":"sign","key":"p256"}) },
	{ 'y', FD_OWNER, 0, 0, J({"id":[],"op":"sign","key":"p256"}) },
	{ 'y', FD_OWNER, 0, 0, J({"id":{},"op":"sign","key":"p256"}) },
	{ 'y', FD_OWNER, 0, 0, J({"id":123456789012345678,"op":"sign","key":"p256"}) },
	{ 'y', FD_OWNER, 0, 0, J({"id":-123456789012345678,"op":"sign","key":"p256"}) },
	{ 'y', FD_OWNER, 0, 0, "{\"id\":\"a/b~\x7f\",\"op\":\"sign\",\"key\":\"p256\"}" },
	/* whitespace of every kind */
	{ 'y', FD_OWNER, 0, 0, " { \"op\" : \"sign\" , \"key\" : \"p256\" , \"claims\" : { \"a\" : [ 1 , 2 ] , \"b\" : { } } } " },
	{ 'y', FD_OWNER, 0, 0, "\t{\"op\":\"sign\",\r\n\"key\":\"p256\"}\r" },
	{ 'y', FD_OWNER, 0, 0, "{\n\"op\"\n:\n\"dpop\"\n,\"key\":\"p256\",\"htm\":\"GET\",\"htu\":\"https://x\"\n}\n" },
	/* claims the caller sets */
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"iat":1699999000}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"iat":-5}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"iat":"yesterday"}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"iat":[1],"exp":{"x":1}}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"exp":1700000100}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"exp":1700003600}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"exp":1}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"exp":-0}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"exp":"never"}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"exp":null,"iat":true}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"jti":"mine"}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"jti":42}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"jti":["a","b"]}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"jti":"","iat":0,"exp":0}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","lifetime":60,"claims":{"iat":1700000000,"iss":"a"}}) },
	{ 'y', FD_OWNER, 0, 0, J({"claims":{"z":1,"iss":"i","sub":"s","aud":"a","nbf":5},"op":"sign","key":"p256"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"aud":["a","b","c"]}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"aud":[]}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"aud":[1,"x",null,{"a":"b"},["y"],"z"]}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"aud":["1","2","3","4","5","6","7","8","9","10","11","12","13","14","15","16","17","18"]}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"aud":5,"iss":6,"sub":[7]}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"iss":null,"sub":false,"aud":{}}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"cnf":{"jkt":"abc"},"scope":"a b","n":[[[[[[[1]]]]]]]}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"":"","a":"","b":""}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"iat2":1,"ex":2,"jtix":3,"is":4}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"a":{"iat":1,"exp":2,"jti":3}}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"a":{"x":1},"b":{"x":1}}}) },
	/* long values: the record cuts them */
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"iss":"iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii","jti":"jjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjj","aud":["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"kid"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"dpop","key":"kid","htm":"GET","htu":"https://x"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"dpop","key":"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn","htm":"GET","htu":"https://x"}) },
	/* keys with policies, within them */
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"pol","claims":{"iss":"svc-a","aud":"https://a"}}) },
	{ 'y', FD_SHARED, 0, 0, J({"op":"sign","key":"pol","claims":{"iss":"exact","aud":["https://a","https://b/c/d"]},"lifetime":600}) },
	{ 'y', FD_SHARED, 0, 0, J({"op":"dpop","key":"pol","htm":"GET","htu":"https://x"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"pol","alg":"ES256","claims":{"iss":"svc-","aud":"https://b/","exp":1700000600}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"ret2"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"dpop","key":"ret2","htm":"GET","htu":"https://x"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"lim","claims":{"sub":"bob-1"},"lifetime":100}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"nodpop","claims":{"sub":"s1"}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"dpop","key":"lim","htm":"GET","htu":"https://x"}) },
	/* proofs: nonce, ath, the htu normalised */
	{ 'y', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"POST","htu":"HTTPS://Api.EXAMPLE.com:443/a/%7euser?q=1#f","nonce":"n-0S6_WzA2Mj","ath":"fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"GET","htu":"http://h:80","nonce":"!#$%&'()*+,-./:;<=>?@[]^_`{|}~"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"PATCH","htu":"https://h:8443/x/../y/%2f"}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"M-SEARCH.!#$%&'*+^_`|~","htu":"https://h:0080/"}) },
	{ 'y', FD_OWNER, 0, 0, J({"htu":"https://x","htm":"GET","key":"p256","op":"dpop","id":{"n":1}}) },
	/* signatures that fail, answered by the fast path too */
	{ 'y', FD_OWNER, P11J_E_TOKEN_UNAVAILABLE, 0, BENCH },
	{ 'y', FD_OWNER, P11J_E_TOKEN_UNAVAILABLE, 0, J({"op":"sign","key":"p256","alg":"ES256","id":"x","claims":{"jti":"j","exp":1700000001}}) },
	{ 'y', FD_OWNER, P11J_E_PKCS11, 0, J({"op":"sign","key":"kid","claims":{"jti":5,"exp":"x"}}) },
	{ 'y', FD_OWNER, P11J_E_PIN_REQUIRED, 1, PROOF },
	{ 'y', FD_OWNER, P11J_E_TOKEN_UNAVAILABLE, 0, J({"op":"dpop","key":"p256","htm":"GET","htu":"HTTP://X"}) },
	{ 'y', FD_OWNER, FD_FAIL_SHORT, 0, BENCH },
	{ 'y', FD_OWNER, FD_FAIL_SHORT, 0, PROOF },
	{ 'y', FD_OWNER, P11J_E_UNKNOWN_KEY, 0, BENCH },
	{ 'y', FD_OWNER, P11J_E_UNKNOWN_KEY, 0, PROOF },
	/* a key gone from its token may be back after a rescan: Jansson path */
	{ 'n', FD_OWNER, P11J_E_UNKNOWN_KEY, 1, BENCH },
	{ 'n', FD_OWNER, P11J_E_UNKNOWN_KEY, 1, PROOF },

	/* declined: escapes, non-ASCII, control characters */
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"iss":"\u0041"}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"iss":"a\/b"}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"iss":"a\"b"}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p\u0032\u0035\u0036"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"iss":"\u0000"}}) },
	{ 'n', FD_OWNER, 0, 0, "{\"op\":\"sign\",\"key\":\"p256\",\"claims\":{\"sub\":\"\xc3\xa9\"}}" },
	{ 'n', FD_OWNER, 0, 0, "{\"op\":\"sign\",\"key\":\"p256\",\"claims\":{\"sub\":\"\xff\"}}" },
	{ 'n', FD_OWNER, 0, 0, "{\"op\":\"sign\",\"key\":\"p256\",\"claims\":{\"s\xc3\xa9\":1}}" },
	{ 'n', FD_OWNER, 0, 0, "{\"op\":\"sign\",\"key\":\"p256\",\"claims\":{\"sub\":\"a\tb\"}}" },
	{ 'n', FD_OWNER, 0, 0, "{\"op\":\"sign\",\"key\":\"p256\"}\x01" },
	{ 'n', FD_OWNER, 0, 0, "\xef\xbb\xbf{\"op\":\"sign\",\"key\":\"p256\"}" },
	/* numbers that are not plain integers in range */
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"n":1.5}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"exp":1700000100.0}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"n":1e3}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"n":1E3}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"n":-0.0}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"n":01}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"n":-}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"n":+1}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"n":1234567890123456789}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"n":99999999999999999999}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"n":-9223372036854775809}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","lifetime":300.0}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","id":0.5}) },
	/* not JSON, not an object */
	{ 'n', FD_OWNER, 0, 0, "" },
	{ 'n', FD_OWNER, 0, 0, " " },
	{ 'n', FD_OWNER, 0, 0, "{" },
	{ 'n', FD_OWNER, 0, 0, "{}" },
	{ 'n', FD_OWNER, 0, 0, "[]" },
	{ 'n', FD_OWNER, 0, 0, "\"sign\"" },
	{ 'n', FD_OWNER, 0, 0, J([{"op":"sign","key":"p256"}]) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256"}{}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256"} x) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256",}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"a":1,}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"a":[1,]}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"a":[1 2]}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"a" 1}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{a:1}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"a":tru}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"a":truex}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"a":nul}}) },
	{ 'n', FD_OWNER, 0, 0, J({'op':"sign","key":"p256"}) },
	{ 'n', FD_OWNER, 0, 0, "{\"op\":\"sign\",\"key\":\"p256\"" },
	{ 'n', FD_OWNER, 0, 0, "{\"op\":\"sign\",\"key\":\"p256" },
	/* duplicates (an error answer on the Jansson path) */
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","key":"p256"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","op":"sign","key":"p256"}) },
	{ 'n', FD_OWNER, 0, 0, J({"id":1,"op":"sign","key":"p256","id":1}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"a":1,"a":2}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"iss":"x","iss":"x"}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"x":{"a":1,"b":2,"a":3}}}) },
	{ 'n', FD_OWNER, 0, 0, J({"id":{"a":1,"a":1},"op":"sign","key":"p256"}) },
	/* too deep, too many members, too long an id */
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"n":[[[[[[[[1]]]]]]]]}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"a":1,"b":1,"c":1,"d":1,"e":1,"f":1,"g":1,"h":1,"i":1,"j":1,"k":1,"l":1,"m":1,"n":1,"o":1,"p":1,"q":1,"r":1,"s":1,"t":1,"u":1,"v":1,"w":1,"x":1,"y":1,"z":1,"A":1,"B":1,"C":1,"D":1,"E":1,"F":1,"G":1,"H":1,"I":1,"J":1,"K":1,"L":1,"M":1,"N":1,"O":1,"P":1,"Q":1,"R":1,"S":1,"T":1,"U":1,"V":1,"W":1,"X":1,"Y":1,"Z":1,"0":1,"1":1,"2":1,"3":1,"4":1,"5":1,"6":1,"7":1,"8":1,"9":1,"_":1,"-":1,"+":1}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","id":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}) },
	/* members it leaves to the Jansson path, and other ops */
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","header":{}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","header":{"typ":"at+jwt"}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"rsa","include":["x5t"]}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","lifetme":5}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","htm":"GET"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"GET","htu":"https://x","claims":{}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"GET","htu":"https://x","lifetime":5}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"GET","htu":"https://x","jwk":{}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"hello"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"keys"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"jwks","key":"p256"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"status"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"login","pin":"1234"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"Sign","key":"p256"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign "}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":1,"key":"p256"}) },
	{ 'n', FD_OWNER, 0, 0, J({"key":"p256"}) },
	/* keys, algs, lifetimes it would refuse */
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"nope"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":""}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"@active"}) },
	{ 'n', FD_OWNER, 0, 1, J({"op":"sign","key":"nope"}) },
	{ 'n', FD_OWNER, 0, 1, J({"op":"dpop","key":"nope","htm":"GET","htu":"https://x"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":null}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":["p256"]}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","alg":"HS256"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","alg":"none"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","alg":"ES384"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","alg":"es256"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","alg":5}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"rsapss","alg":"RS256"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","lifetime":0}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","lifetime":-1}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","lifetime":3601}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","lifetime":86401}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","lifetime":"300"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","lifetime":null}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":[]}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":null}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"exp":1700003601}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"exp":999999999999999999}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"iat":1700003400}}) },
	{ 'y', FD_OWNER, 0, 0, J({"op":"sign","key":"p256","claims":{"exp":-999999999999999999}}) },
	/* policies that refuse */
	{ 'n', FD_STRANGER, 0, 0, BENCH },
	{ 'n', FD_STRANGER, 0, 0, PROOF },
	{ 'n', FD_SHARED, 0, 0, BENCH },
	{ 'n', FD_SHARED, 0, 0, PROOF },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"pol"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"pol","claims":{"iss":"svc-a"}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"pol","claims":{"iss":"nope","aud":"https://a"}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"pol","claims":{"iss":"svc-a","aud":["https://a","https://c"]}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"pol","claims":{"iss":"svc-a","aud":[]}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"pol","claims":{"iss":"svc-a","aud":["https://a",1]}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"pol","claims":{"iss":["svc-a"],"aud":"https://a"}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"pol","claims":{"iss":"svc-a","aud":"https://a"},"lifetime":601}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"pol","claims":{"iss":"svc-a","aud":"https://a","exp":1700000601}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"ret"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"ret","htm":"GET","htu":"https://x"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"auto"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"lim","claims":{"sub":"carol"}}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"sign","key":"lim","claims":{"sub":"bob"},"lifetime":101}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"nodpop","htm":"GET","htu":"https://x"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"rsapss","alg":"RS256","htm":"GET","htu":"https://x"}) },
	/* proof fields that are refused */
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htu":"https://x"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"GET"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","htm":"GET","htu":"https://x"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"get","htu":"https://x"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"","htu":"https://x"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"G T","htu":"https://x"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"GETGETGETGETGETGETGETGETGETGETGET","htu":"https://x"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"GET","htu":"ftp://x"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"GET","htu":"https://u@x/"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"GET","htu":"https://x y/"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"GET","htu":""}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"GET","htu":"https://x","ath":"abc"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"GET","htu":"https://x","ath":"fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEp"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"GET","htu":"https://x","nonce":""}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"GET","htu":"https://x","nonce":"a b"}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":"GET","htu":"https://x","nonce":5}) },
	{ 'n', FD_OWNER, 0, 0, J({"op":"dpop","key":"p256","htm":["GET"],"htu":"https://x"}) },
};

static void run_row(const row *w, const fastdiff_opts *o, size_t *taken)
{
	char msg[8192];
	bool t = false;

	if (fastdiff_run(w->line, strlen(w->line), o, &t, msg, sizeof(msg)) != 0)
		fail_msg("%s\n  line: %s", msg, w->line);
	if (w->take == 'y' && !t)
		fail_msg("the fast path declined: %s", w->line);
	if (w->take == 'n' && t)
		fail_msg("the fast path took: %s", w->line);
	*taken += t;
}

static fastdiff_opts row_opts(const row *w)
{
	return (fastdiff_opts){ .peer = w->peer, .sign_fail = w->fail, .rescan = w->rescan };
}

/* Each row as it is, then without an audit record's fields, without an
 * audit at all, and with a rescan hook that finds nothing. */
static void test_rows(void **state)
{
	size_t taken = 0, ys = 0;

	(void)state;
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		const row *w = &rows[i];
		fastdiff_opts o = row_opts(w);

		ys += w->take == 'y';
		run_row(w, &o, &taken);
		o.no_fields = true;
		run_row(w, &o, &taken);
		o.no_fields = false;
		o.no_audit = true;
		run_row(w, &o, &taken);
		if (w->fail != P11J_E_UNKNOWN_KEY) {
			o = row_opts(w);
			o.rescan = true;
			run_row(w, &o, &taken);
		}
	}
	/* the 'y' rows were taken every time, and only they */
	assert_true(taken >= 3 * ys);
	printf("# %zu rows, %zu taken by the fast path\n", sizeof(rows) / sizeof(rows[0]), taken);
}

/* Every row with one byte deleted, and with each byte turned into a few
 * others that matter to a scanner: whatever the fast path does with the
 * result, it must be what the Jansson path does. */
static void test_mutations(void **state)
{
	static const char subst[] = { '"', '\\', '{', '}', '[', ']', ',', ':', ' ', '0', '-',
				      '.', 'e', 'a', '\0', '\x80', '\x1f', 't' };
	size_t runs = 0, taken = 0;
	char buf[2048], msg[8192];

	(void)state;
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		const row *w = &rows[i];
		size_t n = strlen(w->line);
		fastdiff_opts o = row_opts(w);

		if (n + 1 > sizeof(buf))
			continue;
		for (size_t at = 0; at < n; at++) {
			bool t;

			/* deleted */
			memcpy(buf, w->line, at);
			memcpy(buf + at, w->line + at + 1, n - at - 1);
			if (fastdiff_run(buf, n - 1, &o, &t, msg, sizeof(msg)) != 0)
				fail_msg("%s\n  line: %.*s", msg, (int)(n - 1), buf);
			runs++;
			taken += t;
			/* replaced, every fourth position (all of them for
			 * the short rows) */
			if (n > 120 && at % 4 != 0)
				continue;
			for (size_t s = 0; s < sizeof(subst); s++) {
				memcpy(buf, w->line, n);
				buf[at] = subst[s];
				if (fastdiff_run(buf, n, &o, &t, msg, sizeof(msg)) != 0)
					fail_msg("%s\n  line: %.*s", msg, (int)n, buf);
				runs++;
				taken += t;
			}
		}
	}
	printf("# %zu mutated lines, %zu taken by the fast path\n", runs, taken);
	assert_true(taken > 0);
}

/* A line longer than the fast path's stack copy, and one over the limit. */
static void test_long_lines(void **state)
{
	static const size_t lens[] = { 2000, 3000, 12000, 48000, 65400, 66000 };
	size_t taken = 0;
	char *line = malloc(66000 + 64);
	row w = { 'y', FD_OWNER, 0, 0, line };
	fastdiff_opts o = { 0 };

	(void)state;
	assert_non_null(line);
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		int o1 = snprintf(line, 64, "{\"op\":\"sign\",\"key\":\"p256\",\"claims\":{\"x\":\"");

		memset(line + o1, 'x', lens[i]);
		memcpy(line + o1 + lens[i], "\"}}", 4);
		w.take = lens[i] + 64 <= 65536 ? 'y' : 'n';
		run_row(&w, &o, &taken);
	}
	free(line);
	assert_true(taken >= 5);
}

static int teardown(void **state)
{
	(void)state;
	fastdiff_fini();
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rows),
		cmocka_unit_test(test_mutations),
		cmocka_unit_test(test_long_lines),
	};

	fastdiff_init();
	return cmocka_run_group_tests(tests, NULL, teardown);
}
