#!/usr/bin/python3
"""Integration tests for DPoP (RFC 9449): proofs made by the agent on a
SoftHSM token, used against panva's oidc-provider on 127.0.0.1
(tests/integration/oauth/: its own DPoP for client_credentials and
refresh_token, the test server's for the jwt-bearer grant and /api/echo).

Phase A drives `p11jwt dpop` and sends the proofs with urllib; phase B
drives `p11jwt token --dpop` and `p11jwt call --dpop`. Every proof is also
checked here with PyJWT against the jwk in its own header, and outcomes
are read from the server's /test/stats, not only from p11jwt's output.
Nothing here talks to any address but 127.0.0.1.

Environment: P11JWT_SRCDIR, P11JWT_BUILDDIR (set by meson). Prints TAP.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import Tap  # noqa: E402
from test_agent import Agent, CLI, MKTOKEN, b64u, jwt_parts, run  # noqa: E402
from test_oauth import NODE, OAUTH_DIR, OAuthServer  # noqa: E402

import jwt as pyjwt  # noqa: E402  (Debian python3-jwt)

t = Tap()

JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer'
ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'
# key, proof alg: every key type of the test token
DPOP_PAIRS = [('rsa-2048', 'RS256'), ('rsa-2048', 'PS256'), ('ec-p256', 'ES256'),
              ('ec-p384', 'ES384'), ('ed25519', 'EdDSA')]
PRIVATE_MEMBERS = ('d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k')
ANY = object()  # check_proof: any nonce (or none)
THUMB_MEMBERS = {'RSA': ('e', 'kty', 'n'), 'EC': ('crv', 'kty', 'x', 'y'),
                 'OKP': ('crv', 'kty', 'x')}


def slug(alg):
    return alg.lower()


def thumbprint(jwk):
    """RFC 7638: the required members, sorted, no whitespace, SHA-256."""
    canon = json.dumps({m: jwk[m] for m in THUMB_MEMBERS[jwk['kty']]}, separators=(',', ':'),
                       sort_keys=True)
    return b64u(hashlib.sha256(canon.encode()).digest())


def ath_of(token):
    return b64u(hashlib.sha256(token.encode()).digest())


# ---- the servers -------------------------------------------------------------

class DpopServer(OAuthServer):
    """test_oauth's OAuthServer, with server options (dpop_algs) and its
    own directory, so that two can run side by side."""

    def __init__(self, work, clients, name='oauth', **options):
        d = os.path.join(work, name)
        os.makedirs(d, exist_ok=True)
        cfg = os.path.join(d, 'oauth-config.json')
        with open(cfg, 'w') as f:
            json.dump({'port': 0, 'clients': clients, **options}, f)
        self.logpath = os.path.join(d, 'oauth-server.log')
        self.log = open(self.logpath, 'w')
        self.proc = subprocess.Popen([NODE, os.path.join(OAUTH_DIR, 'server.mjs'), cfg],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline().strip()
        self.url = line.split(' ', 1)[1] if line.startswith('listening ') else None
        self.token_url = f'{self.url}/token' if self.url else None
        self.echo_url = f'{self.url}/api/echo' if self.url else None

    def mode(self, **kw):
        return self.post('/test/mode', kw)

    def dstats(self):
        return self.stats()['dpop']

    def logtail(self):
        self.log.flush()
        return open(self.logpath).read()[-3000:]


def http(method, url, form=None, headers=None, data=None):
    """One request; (status, JSON body or text, headers as a dict with
    lower-case names)."""
    body = urllib.parse.urlencode(form).encode() if form is not None else data
    h = dict(headers or {})
    if form is not None:
        h['Content-Type'] = 'application/x-www-form-urlencoded'
    req = urllib.request.Request(url, method=method, data=body, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, raw, hdrs = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), e.headers
    try:
        out = json.loads(raw)
    except ValueError:
        out = raw.decode(errors='replace')
    return status, out, {k.lower(): v for k, v in hdrs.items()}


def parse_challenge(value):
    """`DPoP error="x", error_description="y", algs="..."` -> (scheme, dict)."""
    if not value:
        return None, {}
    scheme, _, rest = value.partition(' ')
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', rest))


# ---- p11jwt ------------------------------------------------------------------

class Ctx:
    """What every test needs: the CLI's environment, the work directory,
    and every proof seen (for the jti check at the end)."""

    def __init__(self, env, work):
        self.env = env
        self.work = work
        self.jtis = []
        self.nproofs = 0
        self.bad_proofs = []
        self.tokens = []  # access tokens seen, to look for in the audit trail
        self.jkt = {}  # key name -> RFC 7638 thumbprint, from `p11jwt jwks`

    def p11jwt(self, *args, input=None, env=None, timeout=120):
        return run([CLI, *args], env=env or self.env, input=input, timeout=timeout)

    def assertion(self, key, alg, client_id, aud, sub=None):
        r = self.p11jwt('sign', '--key', key, '--alg', alg, '--claim', f'iss={client_id}',
                        '--claim', f'sub={sub or client_id}', '--claim', f'aud={aud}',
                        '--lifetime', '60')
        if r.returncode != 0:
            raise RuntimeError(f'p11jwt sign failed: {r.stderr}')
        return r.stdout.strip()

    def token_file(self, token):
        path = os.path.join(self.work, 'access-token')
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(token)
        return path

    def proof(self, key, htm, htu, alg=None, nonce=None, token=None, stdin=False,
              want_htu=None, loud=False):
        """A proof from `p11jwt dpop --json`, checked here on its own
        (PyJWT, the header's jwk); returns the --json object."""
        args = ['dpop', '--key', key, '--htm', htm, '--htu', htu, '--json']
        if alg:
            args += ['--alg', alg]
        if nonce is not None:
            args += ['--nonce', nonce]
        inp = None
        if token is not None:
            if stdin:
                args += ['--token-file', '-']
                inp = token + '\n'
            else:
                args += ['--token-file', self.token_file(token)]
        r = self.p11jwt(*args, input=inp)
        if r.returncode != 0:
            raise RuntimeError(f'p11jwt {" ".join(args)}: exit {r.returncode}: {r.stderr}')
        out = json.loads(r.stdout)
        self.check_proof(out['jwt'], htm=htm, htu=want_htu or norm_htu(htu), alg=alg,
                         nonce=nonce, ath=ath_of(token) if token is not None else None,
                         jkt=out.get('jkt'), what=f'{key} {htm} {htu}', quiet=not loud)
        return out

    def check_proof(self, proof, *, htm, htu, alg=None, nonce=None, ath=None, jkt=None,
                    what='', quiet=False):
        """Independent verification of one proof; one TAP line (unless
        quiet: then failures are collected for one line at the end)."""
        problems = []
        try:
            h = pyjwt.get_unverified_header(proof)
            jwk = h.get('jwk') or {}
            if h.get('typ') != 'dpop+jwt':
                problems.append(f"typ {h.get('typ')!r}")
            if set(h) != {'typ', 'alg', 'jwk'}:
                problems.append(f'header members {sorted(h)}')
            if alg and h.get('alg') != alg:
                problems.append(f"alg {h.get('alg')} != {alg}")
            bad = [m for m in (*PRIVATE_MEMBERS, 'kid', 'alg', 'use', 'key_ops') if m in jwk]
            if bad:
                problems.append(f'jwk has {bad}')
            if set(jwk) - {'kty', 'crv', 'x', 'y', 'n', 'e'}:
                problems.append(f'jwk members {sorted(jwk)}')
            key = pyjwt.PyJWK(jwk, algorithm=h['alg']).key
            c = pyjwt.decode(proof, key=key, algorithms=[h['alg']],
                             options={'require': ['jti', 'iat'], 'verify_aud': False})
            if c.get('htm') != htm:
                problems.append(f"htm {c.get('htm')!r}")
            if c.get('htu') != htu:
                problems.append(f"htu {c.get('htu')!r} != {htu!r}")
            if nonce is not ANY and c.get('nonce') != nonce:
                problems.append(f"nonce {c.get('nonce')!r} != {nonce!r}")
            if c.get('ath') != ath:
                problems.append(f"ath {c.get('ath')!r} != {ath!r}")
            if not isinstance(c.get('iat'), int) or abs(c['iat'] - time.time()) > 5:
                problems.append(f"iat {c.get('iat')!r} is not now")
            if 'exp' in c:
                problems.append('exp present')
            jti = c.get('jti', '')
            if not re.fullmatch(r'[A-Za-z0-9_-]{22,}', jti):
                problems.append(f'jti {jti!r} is not >= 128 bits of base64url')
            self.jtis.append(jti)
            if jkt is not None and thumbprint(jwk) != jkt:
                problems.append(f'jkt {jkt} != RFC 7638 thumbprint {thumbprint(jwk)}')
        except Exception as e:  # noqa: BLE001
            problems.append(f'does not verify: {e!r}')
        self.nproofs += 1
        if quiet:
            if problems:
                self.bad_proofs.append((what, problems))
            return not problems
        return t.ok(not problems, f'proof {what}: PyJWT verifies it with its own jwk; typ, '
                    'public jwk, alg, htm, htu, nonce, ath, iat, jti, jkt', problems)


def norm_htu(url):
    """What the agent signs as htu (the cases the tests use): no query or
    fragment, scheme and host in lower case, default port dropped."""
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ''
    port = u.port
    scheme = u.scheme.lower()
    netloc = host if port is None or (scheme, port) in (('http', 80), ('https', 443)) \
        else f'{host}:{port}'
    return urllib.parse.urlunsplit((scheme, netloc, u.path or '/', '', ''))


# ---- main --------------------------------------------------------------------

def main():
    work = tempfile.mkdtemp(prefix='p11jwt-dp-', dir='/tmp')
    agent = srv = srv2 = None
    audit = os.path.join(work, 'audit.log')
    try:
        if not os.path.isdir(os.path.join(OAUTH_DIR, 'node_modules', 'oidc-provider')):
            r = run(['npm', 'ci', '--no-audit', '--no-fund', '--loglevel=error', '--prefix',
                     OAUTH_DIR], timeout=600)
            if not t.ok(r.returncode == 0, 'npm ci installs the pinned oidc-provider',
                        r.stdout + r.stderr):
                return
        tokdir = os.path.join(work, 'tok')
        r = run([MKTOKEN, tokdir], timeout=180)
        if not t.ok(r.returncode == 0, 'test token made', r.stderr):
            return
        os.environ['SOFTHSM2_CONF'] = os.path.join(tokdir, 'softhsm2.conf')
        sock = os.path.join(work, 'a', 'agent.sock')
        os.mkdir(os.path.dirname(sock), 0o700)
        env = dict(os.environ, P11JWT_AGENT_SOCK=sock,
                   XDG_RUNTIME_DIR=os.path.join(work, 'rt'),
                   XDG_CONFIG_HOME=os.path.join(work, 'cfg'))
        for k in ('P11JWT_CLIENT_SECRET', 'http_proxy', 'https_proxy', 'HTTP_PROXY',
                  'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY', 'no_proxy', 'NO_PROXY'):
            env.pop(k, None)
        os.makedirs(env['XDG_RUNTIME_DIR'], 0o700)
        ctx = Ctx(env, work)

        # an agent without --allow-dpop makes no proofs; the servers start
        # meanwhile (they need the JWKS only)
        agent = Agent(tokdir, sock, extra=['--audit', 'none'])
        if not t.ok(agent.ready, 'an agent without --allow-dpop starts',
                    None if agent.ready else agent.stderr()):
            return
        jwks = {}
        for key, alg in DPOP_PAIRS:
            r = ctx.p11jwt('jwks', '--key', key, '--alg', alg)
            jwks[(key, alg)] = json.loads(r.stdout)
            ctx.jkt[key] = thumbprint(jwks[(key, alg)]['keys'][0])
        r = ctx.p11jwt('jwks', '--preset', 'okta', '--key', 'ec-p256')
        okta_jwks = json.loads(r.stdout) if r.returncode == 0 else jwks[('ec-p256', 'ES256')]
        clients = [{'client_id': f'cc-dpop-{slug(alg)}', 'jwks': jwks[(key, alg)],
                    'grant': 'client_credentials', 'dpop': True} for key, alg in DPOP_PAIRS]
        es256, eddsa = jwks[('ec-p256', 'ES256')], jwks[('ed25519', 'EdDSA')]
        clients += [
            {'client_id': 'cc-plain', 'jwks': es256, 'grant': 'client_credentials'},
            {'client_id': 'cc-nonce', 'jwks': es256, 'grant': 'client_credentials',
             'dpop': True, 'dpop_nonce': True},
            {'client_id': 'okta-ec-p256', 'jwks': okta_jwks, 'grant': 'client_credentials'},
            {'client_id': 'jb-dpop', 'jwks': es256, 'grant': 'jwt-bearer', 'dpop': True},
            {'client_id': 'jb-plain', 'jwks': es256, 'grant': 'jwt-bearer'},
            {'client_id': 'jb-nonce', 'jwks': eddsa, 'grant': 'jwt-bearer', 'dpop': True,
             'dpop_nonce': True},
            {'client_id': 'jb-short', 'jwks': es256, 'grant': 'jwt-bearer', 'dpop': True,
             'ttl': 62},
        ]
        srv = DpopServer(work, clients)
        if not t.ok(srv.url is not None and srv.url.startswith('http://127.0.0.1:'),
                    'oidc-provider listens on 127.0.0.1', srv.logtail()):
            return
        # a server that takes fewer proof algs (no PS256, no RS256)
        srv2 = DpopServer(work, [
            {'client_id': 'cc-dpop-ps256', 'jwks': jwks[('rsa-2048', 'PS256')],
             'grant': 'client_credentials', 'dpop': True},
            {'client_id': 'cc-dpop-es256', 'jwks': es256, 'grant': 'client_credentials',
             'dpop': True}], name='oauth2', dpop_algs=['ES256', 'ES384', 'EdDSA', 'Ed25519'])
        t.ok(srv2.url is not None, 'a second server, with dpop_algs, listens', srv2.logtail())

        r = ctx.p11jwt('dpop', '--key', 'ec-p256', '--htm', 'POST', '--htu', srv.token_url)
        t.ok(r.returncode == 4 and 'policy_violation' in r.stderr and '--allow-dpop' in
             r.stderr and r.stdout == '',
             'without --allow-dpop: p11jwt dpop is refused (exit 4, policy_violation, '
             'names --allow-dpop)', (r.returncode, r.stderr))
        r = ctx.p11jwt('sign', '--key', 'ec-p256', '--claim', 'sub=x')
        t.eq(r.returncode, 0, 'that agent still signs JWTs')
        if cli_has_dpop(ctx):
            srv.post('/test/reset')
            r = ctx.p11jwt('token', '--key', 'ec-p256', '--alg', 'ES256', '--client-id',
                           'cc-dpop-es256', '--token-url', srv.token_url, '--dpop')
            t.ok(r.returncode == 4 and 'policy_violation' in r.stderr and r.stdout == '' and
                 srv.stats()['token_requests'] == 0,
                 'without --allow-dpop: token --dpop fails before sending anything (exit 4)',
                 (r.returncode, r.stderr))
        agent.stop()
        agent = Agent(tokdir, sock, extra=['--allow-dpop', '--audit', 'file:' + audit])
        if not t.ok(agent.ready, 'the agent starts with --allow-dpop',
                    None if agent.ready else agent.stderr()):
            return

        for name, fn in (('discovery', lambda: test_discovery(ctx, srv, srv2)),
                         ('htu', lambda: test_htu(ctx)),
                         ('client_credentials', lambda: test_client_credentials(ctx, srv)),
                         ('replay', lambda: test_token_replay(ctx, srv)),
                         ('resource', lambda: test_resource(ctx, srv)),
                         ('resource nonce', lambda: test_resource_nonce(ctx, srv)),
                         ('token nonce', lambda: test_token_nonce(ctx, srv)),
                         ('jwt-bearer', lambda: test_jwt_bearer(ctx, srv)),
                         ('dpop_algs', lambda: test_server_algs(ctx, srv2))):
            try:
                fn()
            except Exception:  # noqa: BLE001 - a test must report, not crash
                import traceback
                t.ok(False, f'{name} tests raised', traceback.format_exc())

        phase_b(ctx, srv, srv2)

        t.ok(not ctx.bad_proofs, f'every proof ({ctx.nproofs} in all) verified '
             'independently (PyJWT, its own jwk)', ctx.bad_proofs)
        t.ok(len(ctx.jtis) == len(set(ctx.jtis)) and len(ctx.jtis) >= 20,
             f'the jti of each of the {len(ctx.jtis)} proofs is unique',
             [j for j in ctx.jtis if ctx.jtis.count(j) > 1])
        check_audit(ctx, audit)
    finally:
        for s in (srv, srv2):
            if s and s.url:
                s.stop()
        if agent:
            agent.stop()
        shutil.rmtree(work, ignore_errors=True)


def check_audit(ctx, audit):
    """The agent's audit trail: a record per proof, never a token."""
    try:
        text = open(audit).read()
        recs = [json.loads(line) for line in text.splitlines()]
        dp = [a for a in recs if a.get('op') == 'dpop' and a.get('result') == 'ok']
        leaked = [tok for tok in ctx.tokens if tok in text or ath_of(tok) in text]
        t.ok(dp and not leaked and 'eyJ' not in text,
             f'the audit trail has {len(dp)} dpop records and neither access tokens, their '
             'ath, nor proofs', leaked)
    except (OSError, ValueError, NameError) as e:
        t.ok(False, 'the audit trail is readable', repr(e))


# ---- phase A: p11jwt dpop, requests from here --------------------------------

def cc_form(ctx, srv, key, alg, client_id, scope='api:read'):
    return {'grant_type': 'client_credentials', 'scope': scope,
            'client_assertion_type': ASSERTION_TYPE,
            'client_assertion': ctx.assertion(key, alg, client_id, srv.token_url)}


def cc_token(ctx, srv, key, alg, client_id, proof_key=None, proof_alg=None, nonce=None,
             loud=False):
    """A client_credentials exchange with a fresh proof; (status, body,
    headers, proof --json)."""
    p = ctx.proof(proof_key or key, 'POST', srv.token_url, alg=proof_alg or alg, nonce=nonce,
                  loud=loud)
    st, body, hdrs = http('POST', srv.token_url, cc_form(ctx, srv, key, alg, client_id),
                          {'DPoP': p['jwt']})
    if st == 200:
        ctx.tokens.append(body['access_token'])
    return st, body, hdrs, p


def echo(ctx, srv, token, key=None, alg=None, method='GET', scheme='DPoP', nonce=None,
         proof=None, data=None):
    """/api/echo with the token and (unless key is None and proof is None)
    a fresh proof with ath made by key."""
    headers = {'Authorization': f'{scheme} {token}'}
    if proof is None and key is not None:
        proof = ctx.proof(key, method, srv.echo_url, alg=alg, nonce=nonce, token=token)['jwt']
    if proof is not None:
        headers['DPoP'] = proof
    return http(method, srv.echo_url, headers=headers, data=data)


def test_discovery(ctx, srv, srv2):
    st, meta, _ = http('GET', srv.url + '/.well-known/openid-configuration')
    want = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512',
            'EdDSA', 'Ed25519']
    t.ok(st == 200 and sorted(meta.get('dpop_signing_alg_values_supported', [])) == sorted(want),
         'discovery advertises dpop_signing_alg_values_supported: every alg the keys sign',
         meta.get('dpop_signing_alg_values_supported') if isinstance(meta, dict) else meta)
    st, meta, _ = http('GET', srv2.url + '/.well-known/openid-configuration')
    t.eq(meta.get('dpop_signing_alg_values_supported') if st == 200 else st,
         ['ES256', 'ES384', 'EdDSA', 'Ed25519'],
         'the server option dpop_algs replaces the list')


def test_htu(ctx):
    for given, want in (('HTTPS://Example.COM:443/a/b?x=1#f', 'https://example.com/a/b'),
                        ('http://Example.com:80/x?y', 'http://example.com/x'),
                        ('http://example.com:8080/x#frag', 'http://example.com:8080/x'),
                        ('https://EXAMPLE.com:8443', 'https://example.com:8443/')):
        out = ctx.proof('ec-p256', 'GET', given, want_htu=want, loud=True)
        t.ok(out.get('htu') == want and jwt_parts(out['jwt'])[1].get('htu') == want,
             f'htu {given} is signed as {want}', out.get('htu'))
    # the access token on standard input: the same ath as from a file
    tok = 'tok-' + b64u(os.urandom(24))
    out = ctx.proof('ec-p256', 'GET', 'https://example.com/r', token=tok, stdin=True)
    t.eq(jwt_parts(out['jwt'])[1].get('ath'), ath_of(tok),
         '--token-file - reads the token from standard input: ath = base64url(SHA-256)')
    out = ctx.proof('ec-p256', 'GET', 'https://example.com/r', token=tok)
    t.eq(jwt_parts(out['jwt'])[1].get('ath'), ath_of(tok), '--token-file FILE: the same ath')
    t.ok(set(out) >= {'jwt', 'jkt', 'alg', 'htu', 'jti', 'iat'} and
         out['jti'] == jwt_parts(out['jwt'])[1]['jti'] and
         out['iat'] == jwt_parts(out['jwt'])[1]['iat'] and out['alg'] == 'ES256',
         'p11jwt dpop --json: jwt, jkt, alg, htu, jti, iat, matching the proof', out)


def test_client_credentials(ctx, srv):
    for key, alg in DPOP_PAIRS:
        cid = f'cc-dpop-{slug(alg)}'
        srv.post('/test/reset')
        st, body, hdrs, p = cc_token(ctx, srv, key, alg, cid, loud=True)
        ok = t.ok(st == 200 and body.get('token_type') == 'DPoP',
                  f'client_credentials for {cid} with a {alg} proof ({key}): token_type DPoP',
                  (st, body))
        s = srv.dstats()
        last = s.get('last_token_proof') or {}
        t.ok(s['token_proofs'] == 1 and last.get('ok') and
             (last.get('header') or {}).get('alg') == alg and
             (last.get('claims') or {}).get('jti') == p['jti'] and s['issued']['DPoP'] == 1,
             f'{alg}: the server saw the proof (alg, jti) and issued a DPoP token', s)
        if not ok:
            continue
        token = body['access_token']
        st, out, _ = echo(ctx, srv, token, key, alg)
        t.ok(st == 200 and out.get('token_type') == 'DPoP' and out.get('jkt') == p['jkt'] and
             out.get('client_id') == cid,
             f'{alg}: the token works at the resource with a fresh proof (ath); its jkt is '
             "the agent's", (st, out))
    # a client without dpop_bound_access_tokens: the proof is optional
    st, body, _, p = cc_token(ctx, srv, 'ec-p256', 'ES256', 'cc-plain')
    t.ok(st == 200 and body.get('token_type') == 'DPoP',
         'a client that does not require DPoP still gets a DPoP token when it sends a proof',
         (st, body))
    st, body, _ = http('POST', srv.token_url, cc_form(ctx, srv, 'ec-p256', 'ES256', 'cc-plain'))
    t.ok(st == 200 and body.get('token_type') == 'Bearer',
         'and a Bearer token without one', (st, body))
    if st == 200:
        ctx.tokens.append(body['access_token'])
        st, out, _ = echo(ctx, srv, body['access_token'], scheme='Bearer')
        t.ok(st == 200 and out.get('token_type') == 'Bearer' and out.get('jkt') is None,
             'the Bearer token works as Bearer at the resource (token_type Bearer, no jkt)',
             (st, out))
        st, out, hdrs = echo(ctx, srv, body['access_token'], 'ec-p256')
        t.ok(st == 401 and parse_challenge(hdrs.get('www-authenticate'))[0] == 'DPoP',
             'a Bearer token sent with the DPoP scheme and a proof: 401', (st, out))
    # dpop_bound_access_tokens: no proof, no token
    srv.post('/test/reset')
    st, body, _ = http('POST', srv.token_url,
                       cc_form(ctx, srv, 'ec-p256', 'ES256', 'cc-dpop-es256'))
    t.ok(st == 400 and body.get('error') == 'invalid_grant' and
         'DPoP proof JWT not provided' in body.get('error_description', ''),
         'a client that requires DPoP, without a proof: 400 invalid_grant', (st, body))
    # a proof for another URL or method
    for htm, htu, what in (('POST', srv.url + '/token/introspection', 'another URL'),
                           ('GET', srv.token_url, 'another method')):
        p = ctx.proof('ec-p256', htm, htu)
        st, body, _ = http('POST', srv.token_url,
                           cc_form(ctx, srv, 'ec-p256', 'ES256', 'cc-dpop-es256'),
                           {'DPoP': p['jwt']})
        t.ok(st == 400 and body.get('error') == 'invalid_dpop_proof',
             f'a proof for {what}: 400 invalid_dpop_proof', (st, body))
    t.eq(srv.dstats()['invalid_proofs'], 2, 'the server counted the two invalid proofs')


def test_token_replay(ctx, srv):
    srv.post('/test/reset')
    p = ctx.proof('ec-p384', 'POST', srv.token_url, alg='ES384')
    results = []
    for _ in range(2):
        results.append(http('POST', srv.token_url,
                            cc_form(ctx, srv, 'ec-p384', 'ES384', 'cc-dpop-es384'),
                            {'DPoP': p['jwt']}))
    (st1, b1, _), (st2, b2, _) = results
    t.ok(st1 == 200 and b1.get('token_type') == 'DPoP', 'a proof is accepted once', (st1, b1))
    t.ok(st2 == 400 and 'replay' in b2.get('error_description', '').lower(),
         'the same proof again (with a fresh assertion) is refused as a replay', (st2, b2))
    s = srv.dstats()
    t.ok(s['replays'] == 1 and s['token_proofs'] == 2, 'the server counted one replay', s)


def test_resource(ctx, srv):
    st, body, _, p = cc_token(ctx, srv, 'ec-p256', 'ES256', 'cc-dpop-es256')
    if not t.ok(st == 200, 'a DPoP token for the resource tests', (st, body)):
        return
    token, jkt = body['access_token'], p['jkt']
    srv.post('/test/reset')
    st, out, _ = echo(ctx, srv, token, 'ec-p256', method='POST', data=b'{"n":1}')
    t.ok(st == 200 and out.get('jkt') == jkt and out.get('method') == 'POST' and
         out.get('body') == '{"n":1}', 'POST with the token and a fresh proof: 200', (st, out))
    s = srv.dstats()
    t.ok(s['api_proofs'] == 1 and (s['last_api_proof'] or {}).get('ok') and
         s['last_api_proof']['claims'].get('ath') == ath_of(token),
         'the resource saw one proof, with the ath of the token', s)

    def refused(desc, st, hdrs, error):
        scheme, params = parse_challenge(hdrs.get('www-authenticate'))
        t.ok(st == 401 and scheme == 'DPoP' and params.get('error') == error,
             f'{desc}: 401, WWW-Authenticate: DPoP error="{error}"',
             (st, hdrs.get('www-authenticate')))

    st, _, hdrs = echo(ctx, srv, token, 'ec-p384', alg='ES384')
    refused('a proof by another key', st, hdrs, 'invalid_dpop_proof')
    st, _, hdrs = echo(ctx, srv, token)
    refused('no proof', st, hdrs, 'invalid_dpop_proof')
    st, _, hdrs = echo(ctx, srv, token, scheme='Bearer')
    refused('the DPoP token sent as Bearer', st, hdrs, 'invalid_token')
    pr = ctx.proof('ec-p256', 'GET', srv.echo_url, alg='ES256', token=token)
    st, _, hdrs = echo(ctx, srv, token, scheme='Bearer', proof=pr['jwt'])
    refused('as Bearer, even with a good proof', st, hdrs, 'invalid_token')
    pr = ctx.proof('ec-p256', 'GET', srv.echo_url)
    st, _, hdrs = echo(ctx, srv, token, proof=pr['jwt'])
    refused('a proof without ath', st, hdrs, 'invalid_dpop_proof')
    pr = ctx.proof('ec-p256', 'GET', srv.echo_url, token=token + 'x')
    st, _, hdrs = echo(ctx, srv, token, proof=pr['jwt'])
    refused("a proof with another token's ath", st, hdrs, 'invalid_dpop_proof')
    pr = ctx.proof('ec-p256', 'POST', srv.echo_url, token=token)
    st, _, hdrs = echo(ctx, srv, token, proof=pr['jwt'])
    refused('a POST proof for a GET', st, hdrs, 'invalid_dpop_proof')
    pr = ctx.proof('ec-p256', 'GET', srv.url + '/api/other', token=token)
    st, _, hdrs = echo(ctx, srv, token, proof=pr['jwt'])
    refused('a proof for another URL', st, hdrs, 'invalid_dpop_proof')
    # the query is not part of htu
    pr = ctx.proof('ec-p256', 'GET', srv.echo_url + '?page=2', token=token)
    st, out, _ = http('GET', srv.echo_url + '?page=2',
                      headers={'Authorization': f'DPoP {token}', 'DPoP': pr['jwt']})
    t.ok(st == 200, 'a proof for the URL with a query (htu without it): 200', (st, out))
    st, _, hdrs = http('GET', srv.echo_url,
                       headers={'Authorization': f'DPoP {token}', 'DPoP': pr['jwt']})
    refused('the same proof again', st, hdrs, 'invalid_dpop_proof')
    s = srv.dstats()
    t.ok(s['replays'] == 1 and s['api_by_scheme']['DPoP'] >= 8, 'the resource counted the replay',
         s)


def test_resource_nonce(ctx, srv):
    st, body, _, p = cc_token(ctx, srv, 'ed25519', 'EdDSA', 'cc-dpop-eddsa')
    if not t.ok(st == 200, 'a DPoP token for the resource nonce tests', (st, body)):
        return
    token = body['access_token']
    m = srv.mode(api_dpop_nonce=True)
    srv.post('/test/reset')
    try:
        st, _, hdrs = echo(ctx, srv, token, 'ed25519')
        scheme, params = parse_challenge(hdrs.get('www-authenticate'))
        nonce = hdrs.get('dpop-nonce')
        t.ok(st == 401 and scheme == 'DPoP' and params.get('error') == 'use_dpop_nonce' and
             params.get('error_description') and nonce == m['api_nonce'],
             'nonce mode: a proof without a nonce gets 401 use_dpop_nonce and a DPoP-Nonce',
             (st, hdrs))
        st, out, _ = echo(ctx, srv, token, 'ed25519', nonce=nonce)
        t.ok(st == 200 and out.get('jkt') == p['jkt'], 'the proof with that nonce: 200',
             (st, out))
        t.eq(srv.dstats()['last_api_proof']['claims'].get('nonce'), nonce,
             'the server saw the nonce in the proof')
        m2 = srv.mode(api_dpop_nonce_rotate=True)
        st, _, hdrs = echo(ctx, srv, token, 'ed25519', nonce=nonce)
        t.ok(st == 401 and hdrs.get('dpop-nonce') == m2['api_nonce'] != nonce,
             'after the server rotates its nonce: the old one gets 401 and the new nonce',
             (st, hdrs))
        st, _, _ = echo(ctx, srv, token, 'ed25519', nonce=hdrs.get('dpop-nonce'))
        t.eq(st, 200, 'the new nonce: 200')
        s = srv.dstats()
        t.ok(s['use_dpop_nonce_api'] == 2 and s['use_dpop_nonce'] == 2 and
             s['use_dpop_nonce_token'] == 0, 'the server counted two use_dpop_nonce answers', s)
    finally:
        srv.mode(api_dpop_nonce=False)


def test_token_nonce(ctx, srv):
    srv.post('/test/reset')
    st, body, hdrs, _ = cc_token(ctx, srv, 'ec-p256', 'ES256', 'cc-nonce')
    nonce = hdrs.get('dpop-nonce')
    t.ok(st == 400 and body.get('error') == 'use_dpop_nonce' and nonce,
         'a client that needs a nonce: 400 use_dpop_nonce with a DPoP-Nonce header', (st, body))
    st, body, hdrs, p = cc_token(ctx, srv, 'ec-p256', 'ES256', 'cc-nonce', nonce=nonce)
    t.ok(st == 200 and body.get('token_type') == 'DPoP',
         'with the nonce (and a fresh assertion): a DPoP token', (st, body))
    s = srv.dstats()
    t.ok(s['use_dpop_nonce_token'] == 1 and s['last_token_proof']['claims'].get('nonce') == nonce,
         'the server counted one use_dpop_nonce and saw the nonce', s)
    # the jwt-bearer grant (the test server's code) takes the same nonces
    srv.post('/test/reset')
    form = {'grant_type': JWT_BEARER, 'client_id': 'jb-nonce',
            'assertion': ctx.assertion('ed25519', 'EdDSA', 'jb-nonce', srv.token_url, 'carol')}
    p = ctx.proof('ed25519', 'POST', srv.token_url)
    st, body, hdrs = http('POST', srv.token_url, form, {'DPoP': p['jwt']})
    n2 = hdrs.get('dpop-nonce')
    t.ok(st == 400 and body.get('error') == 'use_dpop_nonce' and n2,
         'jwt-bearer, a client that needs a nonce: 400 use_dpop_nonce, DPoP-Nonce', (st, body))
    p = ctx.proof('ed25519', 'POST', srv.token_url, nonce=nonce)
    form['assertion'] = ctx.assertion('ed25519', 'EdDSA', 'jb-nonce', srv.token_url, 'carol')
    st, body, _ = http('POST', srv.token_url, form, {'DPoP': p['jwt']})
    t.ok(st == 200 and body.get('token_type') == 'DPoP',
         "jwt-bearer accepts oidc-provider's nonce (one nonce for the token endpoint)",
         (st, body))
    if st == 200:
        ctx.tokens.append(body['access_token'])
        p = ctx.proof('ed25519', 'POST', srv.token_url, nonce='not-a-nonce')
        st, body, hdrs = http('POST', srv.token_url,
                              {'grant_type': 'refresh_token', 'client_id': 'jb-nonce',
                               'refresh_token': body['refresh_token']}, {'DPoP': p['jwt']})
        t.ok(st == 400 and body.get('error') == 'use_dpop_nonce' and hdrs.get('dpop-nonce'),
             'a wrong nonce: use_dpop_nonce again', (st, body))
    t.eq(srv.dstats()['use_dpop_nonce_token'], 2, 'two use_dpop_nonce answers counted')


def test_jwt_bearer(ctx, srv):
    srv.post('/test/reset')

    def jb(cid, proof=None, sub='alice', key='ec-p256', alg='ES256'):
        form = {'grant_type': JWT_BEARER, 'client_id': cid,
                'assertion': ctx.assertion(key, alg, cid, srv.token_url, sub)}
        return http('POST', srv.token_url, form, {'DPoP': proof} if proof else {})

    def refresh(cid, rt, proof=None):
        return http('POST', srv.token_url, {'grant_type': 'refresh_token', 'client_id': cid,
                                            'refresh_token': rt},
                    {'DPoP': proof} if proof else {})

    st, body, _ = jb('jb-dpop')
    t.ok(st == 400 and body.get('error') == 'invalid_grant' and
         'DPoP proof JWT not provided' in body.get('error_description', ''),
         'jwt-bearer, a client that requires DPoP, no proof: 400 invalid_grant', (st, body))
    p = ctx.proof('ec-p256', 'POST', srv.token_url)
    st, body, _ = jb('jb-dpop', p['jwt'])
    if not t.ok(st == 200 and body.get('token_type') == 'DPoP' and body.get('refresh_token'),
                'jwt-bearer with a proof: token_type DPoP and a refresh token', (st, body)):
        return
    ctx.tokens.append(body['access_token'])
    st, out, _ = echo(ctx, srv, body['access_token'], 'ec-p256')
    t.ok(st == 200 and out.get('jkt') == p['jkt'] and out.get('sub') == 'alice',
         'the jwt-bearer token is bound to the proof key (jkt) at the resource', (st, out))
    st, _, _ = echo(ctx, srv, body['access_token'], scheme='Bearer')
    t.eq(st, 401, 'and is refused as Bearer')
    st2, b2, _ = jb('jb-dpop', p['jwt'])
    t.ok(st2 == 400 and b2.get('error') == 'invalid_dpop_proof' and
         'replay' in b2.get('error_description', '').lower(),
         'jwt-bearer: the same proof again is refused as a replay', (st2, b2))
    for htm, htu, what in (('GET', srv.token_url, 'for GET'),
                           ('POST', srv.url + '/tokens', 'for another URL')):
        px = ctx.proof('ec-p256', htm, htu)
        st2, b2, _ = jb('jb-dpop', px['jwt'])
        t.ok(st2 == 400 and b2.get('error') == 'invalid_dpop_proof',
             f'jwt-bearer: a proof {what}: 400 invalid_dpop_proof', (st2, b2))
    st2, b2, _ = jb('jb-dpop', 'not.a.proof')
    t.ok(st2 == 400 and b2.get('error') == 'invalid_dpop_proof',
         'jwt-bearer: garbage in DPoP: 400 invalid_dpop_proof', (st2, b2))
    s = srv.dstats()
    t.ok(s['replays'] == 1 and s['invalid_proofs'] == 4 and s['issued']['DPoP'] == 1,
         'the server counted 1 replay, 4 invalid proofs, 1 DPoP token', s)

    # refresh (oidc-provider's grant) wants a proof by the same key
    rt = body['refresh_token']
    st2, b2, _ = refresh('jb-dpop', rt)
    t.ok(st2 == 400 and b2.get('error') == 'invalid_grant',
         'refresh of a DPoP-bound token without a proof: invalid_grant', (st2, b2))
    px = ctx.proof('ec-p384', 'POST', srv.token_url, alg='ES384')
    st2, b2, _ = refresh('jb-dpop', rt, px['jwt'])
    t.ok(st2 == 400 and b2.get('error') == 'invalid_grant' and
         'jkt' in b2.get('error_description', ''),
         'refresh with a proof by another key: invalid_grant (jkt)', (st2, b2))
    px = ctx.proof('ec-p256', 'POST', srv.token_url)
    st2, b2, _ = refresh('jb-dpop', rt, px['jwt'])
    t.ok(st2 == 200 and b2.get('token_type') == 'DPoP' and b2.get('refresh_token') != rt,
         'refresh with a proof by the same key: a new DPoP token', (st2, b2))
    if st2 == 200:
        ctx.tokens.append(b2['access_token'])
        st, out, _ = echo(ctx, srv, b2['access_token'], 'ec-p256')
        t.ok(st == 200 and out.get('jkt') == p['jkt'], 'the refreshed token is bound too',
             (st, out))

    # a client that does not require DPoP but sends a proof: the refresh
    # token is bound all the same
    p = ctx.proof('ec-p256', 'POST', srv.token_url)
    st, body, _ = jb('jb-plain', p['jwt'], sub='bob')
    t.ok(st == 200 and body.get('token_type') == 'DPoP',
         'jwt-bearer, a client that does not require DPoP, with a proof: DPoP', (st, body))
    if st == 200:
        ctx.tokens.append(body['access_token'])
        st2, b2, _ = refresh('jb-plain', body['refresh_token'])
        t.ok(st2 == 400 and b2.get('error') == 'invalid_grant' and
             'jkt' in b2.get('error_description', ''),
             'its refresh token is bound: a refresh without a proof fails (jkt)', (st2, b2))
    st, body, _ = jb('jb-plain', sub='bob')
    t.ok(st == 200 and body.get('token_type') == 'Bearer',
         'jwt-bearer without a proof, for that client: Bearer', (st, body))
    if st == 200:
        ctx.tokens.append(body['access_token'])
        st2, b2, _ = refresh('jb-plain', body['refresh_token'])
        t.ok(st2 == 200 and b2.get('token_type') == 'Bearer',
             'and its refresh token needs no proof', (st2, b2))


def test_server_algs(ctx, srv2):
    srv2.post('/test/reset')
    st, body, _, _ = cc_token(ctx, srv2, 'rsa-2048', 'PS256', 'cc-dpop-ps256')
    t.ok(st == 400 and body.get('error') == 'invalid_dpop_proof',
         'a server without PS256 in dpop_algs: a PS256 proof is invalid_dpop_proof',
         (st, body))
    st, body, _, _ = cc_token(ctx, srv2, 'rsa-2048', 'PS256', 'cc-dpop-ps256',
                              proof_key='ec-p256', proof_alg='ES256')
    t.ok(st == 200 and body.get('token_type') == 'DPoP',
         'the same client with an ES256 proof (another key than the assertion): DPoP',
         (st, body))


# ---- phase B: p11jwt token --dpop, p11jwt call --dpop ------------------------

def cli_has_dpop(ctx):
    r = ctx.p11jwt('token', '--help')
    return '--dpop' in r.stdout + r.stderr


def phase_b(ctx, srv, srv2):
    if not cli_has_dpop(ctx):
        t.skip('p11jwt token --dpop, call --dpop', 'the CLI has no --dpop yet')
        return
    for name, fn in (('token --dpop', lambda: test_cli_token(ctx, srv)),
                     ('cache', lambda: test_cli_cache(ctx, srv)),
                     ('token nonce', lambda: test_cli_nonce(ctx, srv)),
                     ('refresh', lambda: test_cli_refresh(ctx, srv)),
                     ('call --dpop', lambda: test_cli_call(ctx, srv)),
                     ('presets and profiles', lambda: test_cli_presets(ctx, srv)),
                     ('errors', lambda: test_cli_errors(ctx, srv, srv2))):
        try:
            fn()
        except Exception:  # noqa: BLE001
            import traceback
            t.ok(False, f'{name} tests raised', traceback.format_exc())


def cc(srv, key, alg, cid, *extra):
    return ['--key', key, '--alg', alg, '--client-id', cid, '--token-url', srv.token_url,
            *extra]


def jb(srv, key, alg, cid, sub, *extra):
    return ['--grant', 'jwt-bearer', '--key', key, '--alg', alg, '--client-id', cid, '--sub',
            sub, '--token-url', srv.token_url, '--form', f'client_id={cid}', *extra]


def loads(r):
    try:
        return json.loads(r.stdout) if r.returncode == 0 else {}
    except ValueError:
        return {}


def last_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ''


def server_proof(ctx, srv, where, *, htm, htu, alg=None, nonce=ANY, ath=None, jkt=None,
                 what):
    """The last proof the server received at /token or /api/echo, checked
    here with PyJWT (loud: one TAP line). The CLI keeps the nonces servers
    send, also with successful answers, so by default any nonce goes."""
    last = srv.dstats().get(f'last_{where}_proof') or {}
    if not last.get('jwt'):
        return t.ok(False, f'{what}: the server received a proof', last)
    return ctx.check_proof(last['jwt'], htm=htm, htu=htu, alg=alg, nonce=nonce, ath=ath,
                           jkt=jkt, what=what)


def test_cli_token(ctx, srv):
    for key, alg in (('ec-p256', 'ES256'), ('rsa-2048', 'PS256'), ('ed25519', 'EdDSA')):
        cid = f'cc-dpop-{slug(alg)}'
        srv.post('/test/reset')
        r = ctx.p11jwt('token', *cc(srv, key, alg, cid, '--dpop', '--json', '--no-cache'))
        out = loads(r)
        if not t.ok(r.returncode == 0 and out.get('token_type') == 'DPoP',
                    f'token --dpop ({cid}, {key}): token_type DPoP', r.stderr):
            continue
        ctx.tokens.append(out['access_token'])
        t.eq(out.get('p11jwt', {}).get('dpop'), {'key': key, 'jkt': ctx.jkt[key]},
             f'token --dpop {key}: --json says p11jwt.dpop {{key, jkt}}, jkt the RFC 7638 '
             'thumbprint of its JWKS entry')
        s = srv.dstats()
        t.ok(s['token_proofs'] == 1 and s['issued'] == {'Bearer': 0, 'DPoP': 1} and
             srv.stats()['token_requests'] == 1 and s['last_token_proof']['ok'],
             f'token --dpop {key}: the server got one request with a proof, issued one DPoP '
             'token', s)
        server_proof(ctx, srv, 'token', htm='POST', htu=srv.token_url, alg=alg,
                     jkt=ctx.jkt[key], what=f'token --dpop {key}: its proof at /token')
        st, body, _ = echo(ctx, srv, out['access_token'], key, alg)
        t.ok(st == 200 and body.get('jkt') == ctx.jkt[key],
             f'token --dpop {key}: the token works at the resource with our own proof',
             (st, body))
    # --dpop-key: another key makes the proofs (its own default alg)
    srv.post('/test/reset')
    r = ctx.p11jwt('token', *cc(srv, 'rsa-2048', 'PS256', 'cc-dpop-ps256', '--dpop-key',
                                'ec-p384', '--json', '--no-cache'))
    out = loads(r)
    s = srv.stats()
    t.ok(r.returncode == 0 and out.get('token_type') == 'DPoP' and
         out.get('p11jwt', {}).get('dpop') == {'key': 'ec-p384', 'jkt': ctx.jkt['ec-p384']} and
         s['last_assertion']['alg'] == 'PS256' and
         s['dpop']['last_token_proof']['header']['alg'] == 'ES384',
         '--dpop-key ec-p384 (implies --dpop): PS256 assertion, ES384 proof, bound to ec-p384',
         (r.stderr, out.get('p11jwt'), s['dpop']['last_token_proof']))
    # --dpop-key naming no key of the agent: exit 2 before anything is sent
    srv.post('/test/reset')
    rn = ctx.p11jwt('token', *cc(srv, 'rsa-2048', 'PS256', 'cc-dpop-ps256', '--dpop-key',
                                 'no-such-key', '--no-cache'))
    t.ok(rn.returncode == 2 and 'not_found' in rn.stderr and
         "the agent has no key 'no-such-key'" in rn.stderr and
         srv.stats()['token_requests'] == 0,
         '--dpop-key no-such-key: exit 2, not_found naming it, no token request sent',
         rn.stderr)
    if r.returncode == 0:
        ctx.tokens.append(out['access_token'])
        st, body, _ = echo(ctx, srv, out['access_token'], 'ec-p384')
        t.ok(st == 200 and body.get('jkt') == ctx.jkt['ec-p384'],
             '--dpop-key: the token is bound to that key at the resource', (st, body))
    # --dry-run shows the proof it would send, and sends nothing
    srv.post('/test/reset')
    r = ctx.p11jwt('token', *cc(srv, 'ec-p256', 'ES256', 'cc-dpop-es256', '--dpop',
                                '--dry-run'))
    out = loads(r).get('dpop') or {}
    t.ok(r.returncode == 0 and out.get('key') == 'ec-p256' and
         out.get('jkt') == ctx.jkt['ec-p256'] and
         (out.get('header') or {}).get('typ') == 'dpop+jwt' and
         (out.get('claims') or {}).get('htu') == srv.token_url and
         srv.stats()['token_requests'] == 0,
         'token --dpop --dry-run: shows the proof (key, jkt, header, claims), sends nothing',
         r.stdout + r.stderr)


def cache_rows(ctx):
    r = ctx.p11jwt('cache', 'list', '--json')
    try:
        return json.loads(r.stdout)
    except ValueError:
        return []


def test_cli_cache(ctx, srv):
    srv.post('/test/reset')
    a = cc(srv, 'ec-p384', 'ES384', 'cc-dpop-es384', '--dpop', '--scope', 'api:read')
    r1, r2 = ctx.p11jwt('token', *a), ctx.p11jwt('token', *a)
    t.ok(r1.returncode == 0 and r2.stdout == r1.stdout and srv.stats()['token_requests'] == 1,
         'token --dpop twice: the second is a cache hit (one request at the server)',
         r1.stderr + r2.stderr)
    tok1 = r1.stdout.strip()
    ctx.tokens.append(tok1)
    rows = [e for e in cache_rows(ctx) if e.get('client_id') == 'cc-dpop-es384']
    t.ok(len(rows) == 1 and rows[0].get('token_type') == 'DPoP' and
         rows[0].get('jkt') == ctx.jkt['ec-p384'],
         'cache list --json: the entry has token_type DPoP and the jkt', rows)
    r = ctx.p11jwt('cache', 'list')
    t.ok(r.returncode == 0 and 'DPoP' in r.stdout and tok1 not in r.stdout,
         'cache list says DPoP and shows no token', r.stdout)
    # another proof key: never the token bound to the first one
    r3 = ctx.p11jwt('token', *a, '--dpop-key', 'ec-p256', '--json')
    out = loads(r3)
    t.ok(r3.returncode == 0 and out.get('access_token') != tok1 and
         srv.stats()['token_requests'] == 2 and
         out.get('p11jwt', {}).get('dpop', {}).get('jkt') == ctx.jkt['ec-p256'],
         'the same client with --dpop-key ec-p256: a new exchange, not the ec-p384 token',
         r3.stderr)
    if r3.returncode == 0:
        ctx.tokens.append(out['access_token'])
        st, body, _ = echo(ctx, srv, out['access_token'], 'ec-p256')
        t.ok(st == 200 and body.get('jkt') == ctx.jkt['ec-p256'],
             'and that token is bound to ec-p256', (st, body))
    r4 = ctx.p11jwt('token', *a, '--json')
    out = loads(r4)
    t.ok(out.get('access_token') == tok1 and srv.stats()['token_requests'] == 2 and
         out.get('token_type') == 'DPoP' and
         out.get('p11jwt', {}).get('dpop') == {'key': 'ec-p384', 'jkt': ctx.jkt['ec-p384']},
         'back to ec-p384: its cached token again; --json on the hit says DPoP, key and jkt',
         (r4.stdout, r4.stderr))

    # Bearer and DPoP tokens of one client never mix
    srv.post('/test/reset')
    b = cc(srv, 'ec-p256', 'ES256', 'cc-plain', '--scope', 'api:write')
    rd = ctx.p11jwt('token', *b, '--dpop', '--json')
    rb = ctx.p11jwt('token', *b, '--json')
    od, ob = loads(rd), loads(rb)
    s = srv.stats()
    t.ok(od.get('token_type') == 'DPoP' and ob.get('token_type') == 'Bearer' and
         od.get('access_token') != ob.get('access_token') and s['token_requests'] == 2 and
         s['dpop']['issued'] == {'Bearer': 1, 'DPoP': 1},
         'without --dpop after a --dpop run: a new Bearer exchange, not the DPoP token',
         (rd.stderr, rb.stderr, s['dpop']['issued']))
    t.ok('dpop' not in ob.get('p11jwt', {}), 'the Bearer answer has no p11jwt.dpop',
         ob.get('p11jwt'))
    rd2, rb2 = ctx.p11jwt('token', *b, '--dpop'), ctx.p11jwt('token', *b)
    t.ok(rd2.stdout.strip() == od.get('access_token') and
         rb2.stdout.strip() == ob.get('access_token') and srv.stats()['token_requests'] == 2,
         'each comes back from the cache for its own kind of request', (rd2.stderr, rb2.stderr))
    for tok in (od.get('access_token'), ob.get('access_token')):
        if tok:
            ctx.tokens.append(tok)
    if ob.get('access_token') and od.get('access_token'):
        st1, _, _ = echo(ctx, srv, ob['access_token'], scheme='Bearer')
        st2, _, _ = echo(ctx, srv, od['access_token'], scheme='Bearer')
        t.ok(st1 == 200 and st2 == 401, 'the Bearer one works as Bearer, the DPoP one does not',
             (st1, st2))
    rows = [e for e in cache_rows(ctx) if e.get('client_id') == 'cc-plain']
    kinds = sorted((e.get('token_type'), e.get('jkt')) for e in rows)
    t.eq(kinds, sorted([('Bearer', None), ('DPoP', ctx.jkt['ec-p256'])]),
         'cache list --json: two cc-plain rows, Bearer without jkt and DPoP with it')


def nonce_files(ctx):
    d = os.path.join(ctx.env['XDG_RUNTIME_DIR'], 'p11jwt', 'cache')
    try:
        return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith('.nonce'))
    except OSError:
        return []


def test_cli_nonce(ctx, srv):
    # oidc-provider sends a DPoP-Nonce with every answer to a proof without
    # its newest nonce, and the CLI keeps it: start without any
    ctx.p11jwt('cache', 'clear')
    srv.post('/test/reset')
    a = cc(srv, 'ec-p256', 'ES256', 'cc-nonce', '--dpop', '--no-cache', '--json')
    r = ctx.p11jwt('token', *a)
    out = loads(r)
    s = srv.stats()
    last = s['dpop']['last_token_proof'] or {}
    t.ok(r.returncode == 0 and out.get('token_type') == 'DPoP' and
         s['dpop']['use_dpop_nonce_token'] == 1 and s['token_requests'] == 2 and
         (last.get('claims') or {}).get('nonce') and last.get('ok'),
         'use_dpop_nonce: retried once with the nonce (2 requests, 1 use_dpop_nonce)',
         (r.stderr, s))
    if r.returncode == 0:
        ctx.tokens.append(out['access_token'])
    server_proof(ctx, srv, 'token', htm='POST', htu=srv.token_url, alg='ES256',
                 nonce=(last.get('claims') or {}).get('nonce'), jkt=ctx.jkt['ec-p256'],
                 what='token --dpop: the retried proof, with the nonce')
    files = nonce_files(ctx)
    t.ok(files and all((os.stat(f).st_mode & 0o777) == 0o600 for f in files),
         'the nonce is kept in the cache directory (*.nonce, 0600)', files)
    srv.post('/test/reset')
    r = ctx.p11jwt('token', *a)
    s = srv.stats()
    t.ok(r.returncode == 0 and s['dpop']['use_dpop_nonce_token'] == 0 and
         s['token_requests'] == 1 and
         (s['dpop']['last_token_proof']['claims'] or {}).get('nonce'),
         'the next run sends the kept nonce at once (1 request, no use_dpop_nonce)',
         (r.stderr, s))
    if r.returncode == 0:
        ctx.tokens.append(loads(r)['access_token'])
    # the jwt-bearer grant on the same server takes the same nonce
    srv.post('/test/reset')
    r = ctx.p11jwt('token', *jb(srv, 'ed25519', 'EdDSA', 'jb-nonce', 'carol', '--dpop',
                                '--no-cache', '--json'))
    s = srv.stats()
    t.ok(r.returncode == 0 and loads(r).get('token_type') == 'DPoP' and
         s['dpop']['use_dpop_nonce_token'] == 0 and s['token_requests'] == 1,
         'another client of that token endpoint (jwt-bearer): the kept nonce works at once',
         (r.stderr, s))
    if r.returncode == 0:
        ctx.tokens.append(loads(r)['access_token'])
    r = ctx.p11jwt('cache', 'clear')
    t.ok(r.returncode == 0 and not nonce_files(ctx), 'cache clear removes the nonce files',
         nonce_files(ctx))


def test_cli_refresh(ctx, srv):
    srv.post('/test/reset')
    a = jb(srv, 'ec-p256', 'ES256', 'jb-short', 'dave', '--dpop')
    r1 = ctx.p11jwt('token', *a)
    time.sleep(2.5)  # ttl 62 s, the cache's margin 60 s: stale after 2 s
    r2 = ctx.p11jwt('token', *a, '--json')
    out = loads(r2)
    s = srv.stats()
    t.ok(r1.returncode == 0 and r2.returncode == 0 and out.get('access_token') !=
         r1.stdout.strip() and out.get('token_type') == 'DPoP' and
         s['by_grant'].get('refresh_token') == 1 and s['by_grant'].get(JWT_BEARER) == 1,
         'a stale DPoP token is refreshed (refresh_token grant, no new assertion)',
         (r1.stderr, r2.stderr, s['by_grant']))
    last = s['dpop']['last_token_proof'] or {}
    t.ok(s['dpop']['token_proofs'] == 2 and last.get('ok') and
         s['dpop']['issued']['DPoP'] == 2,
         'the refresh request carried a proof too, and got a DPoP token', s['dpop'])
    server_proof(ctx, srv, 'token', htm='POST', htu=srv.token_url, alg='ES256',
                 jkt=ctx.jkt['ec-p256'], nonce=(last.get('claims') or {}).get('nonce'),
                 what='the refresh proof')
    if r2.returncode == 0:
        ctx.tokens += [r1.stdout.strip(), out['access_token']]
        st, body, _ = echo(ctx, srv, out['access_token'], 'ec-p256')
        t.ok(st == 200 and body.get('sub') == 'dave' and body.get('jkt') == ctx.jkt['ec-p256'],
             'the refreshed token is bound to the same key', (st, body))


def test_cli_call(ctx, srv):
    a = cc(srv, 'ed25519', 'EdDSA', 'cc-dpop-eddsa', '--dpop')
    srv.post('/test/reset')
    r = ctx.p11jwt('call', *a, srv.echo_url)
    body = loads(r)
    t.ok(r.returncode == 0 and body.get('token_type') == 'DPoP' and
         body.get('jkt') == ctx.jkt['ed25519'] and body.get('method') == 'GET',
         'call --dpop: Authorization: DPoP and a proof; the resource says DPoP and the jkt',
         r.stderr)
    tok = ctx.p11jwt('token', *a).stdout.strip()  # the cached token
    ctx.tokens.append(tok)
    s = srv.stats()['dpop']
    t.ok(s['api_by_scheme'] == {'Bearer': 0, 'DPoP': 1} and s['api_proofs'] == 1,
         'the server saw the DPoP scheme with one proof', s)
    server_proof(ctx, srv, 'api', htm='GET', htu=srv.echo_url, alg='EdDSA', ath=ath_of(tok),
                 jkt=ctx.jkt['ed25519'], what='call --dpop: the proof at the resource (ath)')
    r = ctx.p11jwt('call', *a, '-X', 'PUT', '-d', '{"n":2}', srv.echo_url + '?x=1#frag')
    body = loads(r)
    t.ok(r.returncode == 0 and body.get('method') == 'PUT' and body.get('body') == '{"n":2}',
         'call --dpop -X PUT -d, a URL with a query: 200', r.stderr)
    server_proof(ctx, srv, 'api', htm='PUT', htu=srv.echo_url, alg='EdDSA', ath=ath_of(tok),
                 jkt=ctx.jkt['ed25519'], what='call --dpop -X PUT: htm PUT, htu without the query')
    # a revoked token: a new one, with a fresh proof each time
    srv.post('/test/revoke')
    srv.post('/test/reset')
    r = ctx.p11jwt('call', *a, srv.echo_url)
    s = srv.stats()
    t.ok(r.returncode == 0 and s['api_401'] == 1 and s['token_requests'] == 1 and
         s['api_requests'] == 2 and s['dpop']['token_proofs'] == 1 and
         s['dpop']['api_proofs'] == 2 and s['dpop']['replays'] == 0,
         'a 401 to the cached DPoP token: a new token (with a proof), the call again',
         (r.stderr, s))
    tok = ctx.p11jwt('token', *a).stdout.strip()
    ctx.tokens.append(tok)

    # the resource's nonce
    try:
        m = srv.mode(api_dpop_nonce=True)
        srv.post('/test/reset')
        r = ctx.p11jwt('call', *a, srv.echo_url)
        s = srv.stats()
        t.ok(r.returncode == 0 and s['dpop']['use_dpop_nonce_api'] == 1 and
             s['api_requests'] == 2 and s['token_requests'] == 0,
             'the API asks for a nonce: one retry with it (2 API requests, no new token)',
             (r.stderr, s))
        server_proof(ctx, srv, 'api', htm='GET', htu=srv.echo_url, alg='EdDSA',
                     ath=ath_of(tok), nonce=m['api_nonce'], jkt=ctx.jkt['ed25519'],
                     what='call --dpop: the retried proof carries the API nonce')
        r = ctx.p11jwt('call', *a, srv.echo_url)
        s = srv.stats()
        t.ok(r.returncode == 0 and s['dpop']['use_dpop_nonce_api'] == 1 and
             s['api_requests'] == 3, 'the next call sends the kept nonce at once', (r.stderr, s))
        m = srv.mode(api_dpop_nonce_rotate=True)
        r = ctx.p11jwt('call', *a, srv.echo_url)
        s = srv.stats()
        t.ok(r.returncode == 0 and s['dpop']['use_dpop_nonce_api'] == 2 and
             s['dpop']['last_api_proof']['claims'].get('nonce') == m['api_nonce'],
             'the server rotates its nonce: one more retry, with the new one', (r.stderr, s))
        r = ctx.p11jwt('call', *a, srv.echo_url)
        t.ok(r.returncode == 0 and srv.dstats()['use_dpop_nonce_api'] == 2,
             'and then the latest nonce is sent at once', r.stderr)
        # a new nonce in each 200: the client follows it (RFC 9449 9)
        srv.mode(api_dpop_nonce_rotate_on_success=True)
        srv.post('/test/reset')
        for _ in range(2):
            r = ctx.p11jwt('call', *a, srv.echo_url)
        s = srv.stats()
        t.ok(r.returncode == 0 and s['dpop']['use_dpop_nonce_api'] == 0 and
             s['api_requests'] == 2,
             'a new DPoP-Nonce in each 200 answer: the next call uses it (no 401)',
             (r.stderr, s))
        srv.mode(api_dpop_nonce_rotate_on_success=False)
        # the token endpoint keeps its own nonce (same origin): with none
        # kept, one use_dpop_nonce each, then none
        ctx.p11jwt('cache', 'clear')
        srv.post('/test/reset')
        rs = [ctx.p11jwt('token', *cc(srv, 'ec-p256', 'ES256', 'cc-nonce', '--dpop',
                                      '--no-cache')),
              ctx.p11jwt('call', *a, srv.echo_url),
              ctx.p11jwt('token', *cc(srv, 'ec-p256', 'ES256', 'cc-nonce', '--dpop',
                                      '--no-cache')),
              ctx.p11jwt('call', *a, srv.echo_url)]
        s = srv.stats()
        t.ok(all(r.returncode == 0 for r in rs) and
             s['dpop']['use_dpop_nonce_token'] == 1 and s['dpop']['use_dpop_nonce_api'] == 1 and
             s['token_requests'] == 4 and s['api_requests'] == 3,
             'the token endpoint and the API on one origin keep their own nonces (token, '
             'call, token, call: one use_dpop_nonce each)', ([r.stderr for r in rs], s))
        ctx.tokens += [r.stdout.strip() for r in rs[0::2] if r.returncode == 0]
    finally:
        srv.mode(api_dpop_nonce=False, api_dpop_nonce_rotate_on_success=False)


def test_cli_presets(ctx, srv):
    base = ['--preset', 'okta', '--key', 'ec-p256', '--client-id', 'okta-ec-p256',
            '--token-url', srv.token_url, '--scope', 'api:read', '--json', '--no-cache']
    srv.post('/test/reset')
    r = ctx.p11jwt('token', *base)
    out = loads(r)
    s = srv.dstats()
    t.ok(r.returncode == 0 and out.get('token_type') == 'DPoP' and s['token_proofs'] == 1 and
         out.get('p11jwt', {}).get('dpop', {}).get('jkt') == ctx.jkt['ec-p256'],
         'the okta preset turns DPoP on by default', (r.stderr, s))
    r = ctx.p11jwt('token', *base, '--no-dpop')
    out2 = loads(r)
    s = srv.dstats()
    t.ok(r.returncode == 0 and out2.get('token_type') == 'Bearer' and s['token_proofs'] == 1 and
         s['issued']['Bearer'] == 1, 'okta --no-dpop: no proof, a Bearer token', (r.stderr, s))
    ctx.tokens += [o['access_token'] for o in (out, out2) if o.get('access_token')]
    pdir = os.path.join(ctx.env['XDG_CONFIG_HOME'], 'p11jwt', 'profiles')
    os.makedirs(pdir, exist_ok=True)
    with open(os.path.join(pdir, 'dpop-on.json'), 'w') as f:
        json.dump({'key': 'ec-p256', 'alg': 'ES256', 'client_id': 'cc-dpop-es384',
                   'token_url': srv.token_url, 'dpop': True, 'dpop_key': 'ec-p384'}, f)
    with open(os.path.join(pdir, 'okta-off.json'), 'w') as f:
        json.dump({'preset': 'okta', 'key': 'ec-p256', 'client_id': 'okta-ec-p256',
                   'token_url': srv.token_url, 'dpop': False}, f)
    # cc-dpop-es384's JWKS is ec-p384's: sign the assertion with it too
    srv.post('/test/reset')
    r = ctx.p11jwt('token', '--profile', 'dpop-on', '--key', 'ec-p384', '--alg', 'ES384',
                   '--json', '--no-cache')
    out = loads(r)
    s = srv.dstats()
    t.ok(r.returncode == 0 and out.get('p11jwt', {}).get('dpop') ==
         {'key': 'ec-p384', 'jkt': ctx.jkt['ec-p384']} and
         s['last_token_proof']['header']['alg'] == 'ES384',
         'a profile with "dpop": true and "dpop_key": the proof by that key', (r.stderr, s))
    r = ctx.p11jwt('token', '--profile', 'okta-off', '--json', '--no-cache')
    out2 = loads(r)
    t.ok(r.returncode == 0 and out2.get('token_type') == 'Bearer' and
         srv.dstats()['token_proofs'] == 1, 'a profile with "dpop": false turns okta\'s off',
         r.stderr)
    ctx.tokens += [o['access_token'] for o in (out, out2) if o.get('access_token')]


def test_cli_errors(ctx, srv, srv2):
    def hint_ok(r, words, desc, code=6):
        last = last_line(r.stderr)
        return t.ok(r.returncode == code and last.startswith('p11jwt: hint:') and
                    all(w in last for w in words), desc, (r.returncode, r.stderr))

    srv.post('/test/reset')
    r = ctx.p11jwt('token', *cc(srv, 'ec-p256', 'ES256', 'cc-dpop-es256', '--no-cache'))
    hint_ok(r, ['--dpop'], 'a client that requires DPoP, without --dpop: exit 6, invalid_grant, '
            'and a last line "p11jwt: hint:" naming --dpop')
    t.ok('invalid_grant' in r.stderr and srv.dstats()['token_proofs'] == 0,
         'the server said invalid_grant to a request without a proof', r.stderr)
    r = ctx.p11jwt('token', *jb(srv, 'ec-p256', 'ES256', 'jb-dpop', 'eve', '--no-cache'))
    hint_ok(r, ['--dpop'], 'jwt-bearer, a client that requires DPoP, without --dpop: the '
            '--dpop hint')
    r = ctx.p11jwt('call', *cc(srv, 'ec-p256', 'ES256', 'cc-dpop-es256'), srv.echo_url)
    hint_ok(r, ['--dpop'], 'call without --dpop to a client that requires it: the --dpop hint')

    # a proof alg the server does not take: its metadata in the hint
    srv2.post('/test/reset')
    r = ctx.p11jwt('token', '--key', 'rsa-2048', '--alg', 'PS256', '--client-id',
                   'cc-dpop-ps256', '--token-url', srv2.token_url, '--dpop', '--no-cache')
    hint_ok(r, ['dpop_signing_alg_values_supported', 'ES256 ES384 EdDSA Ed25519', 'PS256'],
            'invalid_dpop_proof (PS256 at a server without it): exit 6, the hint lists the '
            "server's dpop_signing_alg_values_supported")
    t.ok('invalid_dpop_proof' in r.stderr and srv2.dstats()['invalid_proofs'] == 1,
         'the server said invalid_dpop_proof', r.stderr)
    r = ctx.p11jwt('token', '--key', 'rsa-2048', '--alg', 'PS256', '--client-id',
                   'cc-dpop-ps256', '--token-url', srv2.token_url, '--dpop-key', 'ec-p256',
                   '--no-cache')
    t.ok(r.returncode == 0, 'the same client with --dpop-key ec-p256 (ES256): a token', r.stderr)

    # use_dpop_nonce after the one retry
    try:
        srv.mode(token_dpop_nonce_always=True)
        srv.post('/test/reset')
        r = ctx.p11jwt('token', *cc(srv, 'ec-p256', 'ES256', 'cc-dpop-es256', '--dpop',
                                    '--no-cache'))
        s = srv.stats()
        hint_ok(r, ['nonce'], 'use_dpop_nonce again after the retry: exit 6 and a nonce hint')
        t.ok(s['token_requests'] == 2 and s['dpop']['use_dpop_nonce_token'] == 2,
             'exactly one retry (2 requests, 2 use_dpop_nonce)', s)
    finally:
        srv.mode(token_dpop_nonce_always=False)
    try:
        a = cc(srv, 'ed25519', 'EdDSA', 'cc-dpop-eddsa', '--dpop')
        ctx.p11jwt('token', *a)  # in the cache
        srv.mode(api_dpop_nonce_always=True)
        srv.post('/test/reset')
        r = ctx.p11jwt('call', *a, srv.echo_url)
        s = srv.stats()
        t.ok(r.returncode == 11 and 'use_dpop_nonce' in r.stderr and s['api_requests'] == 2 and
             s['dpop']['use_dpop_nonce_api'] == 2 and s['token_requests'] == 0,
             'call: the API wants a new nonce again after the retry: exit 11, 2 requests, no '
             'new token', (r.stderr, s))
        t.ok(last_line(r.stderr).startswith('p11jwt: hint:') and 'nonce' in last_line(r.stderr),
             'call: that use_dpop_nonce ends with a "p11jwt: hint:" line', r.stderr)
    finally:
        srv.mode(api_dpop_nonce_always=False)
    # a server that ignores the proof: a Bearer token is an error
    try:
        srv.mode(token_ignore_dpop=True)
        srv.post('/test/reset')
        r = ctx.p11jwt('token', *cc(srv, 'ec-p256', 'ES256', 'cc-plain', '--dpop', '--no-cache'))
        s = srv.dstats()
        t.ok(r.returncode == 10 and 'DPoP' in r.stderr and r.stdout == '' and
             s['issued'] == {'Bearer': 1, 'DPoP': 0},
             'token --dpop answered with a Bearer token: exit 10, nothing printed',
             (r.returncode, r.stderr, s))
        rows = [e for e in cache_rows(ctx) if e.get('client_id') == 'cc-plain' and
                e.get('token_type') == 'Bearer']
        t.ok(len(rows) <= 1, 'and that Bearer token is not cached as a DPoP one', rows)
    finally:
        srv.mode(token_ignore_dpop=False)


if __name__ == '__main__':
    try:
        main()
    except Exception:  # noqa: BLE001
        import traceback
        t.ok(False, 'test_dpop raised', traceback.format_exc())
    t.done()
