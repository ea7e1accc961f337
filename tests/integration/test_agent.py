#!/usr/bin/python3
"""Integration tests: the real agent on a SoftHSM token, driven through the CLI
and the raw socket, with every signature checked by tools we did not write:
the OpenSSL command line, PyJWT (python3-jwt) and latchset's `jose` CLI.

Environment (set by tests/integration/meson.build): P11JWT_SRCDIR,
P11JWT_BUILDDIR. Prints TAP.
"""
import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import Tap  # noqa: E402

import jwt as pyjwt  # noqa: E402  (Debian python3-jwt, independent verifier)
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography import x509  # noqa: E402

SRC = os.environ.get('P11JWT_SRCDIR') or os.path.abspath(
    os.path.join(os.path.dirname(__file__), '..', '..'))
BUILD = os.environ.get('P11JWT_BUILDDIR') or os.path.join(SRC, 'build')
AGENT = os.path.join(BUILD, 'agent', 'p11jwt-agent')
CLI = os.path.join(BUILD, 'cli', 'p11jwt')
MKTOKEN = os.path.join(SRC, 'softhsm-conf', 'mktoken')
OSSL_VERIFY = os.path.join(SRC, 'tests', 'tools', 'jwt-openssl-verify')
MODULE = '/usr/lib/softhsm/libsofthsm2.so'
TOKEN_URI = 'pkcs11:token=p11jwt-test'

PAIRS = [('rsa-2048', a) for a in ('RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512')] + [
    ('ec-p256', 'ES256'), ('ec-p384', 'ES384'), ('ec-p521', 'ES512'), ('ed25519', 'EdDSA')]
DEFAULT_ALG = {'rsa-2048': 'RS256', 'ec-p256': 'ES256', 'ec-p384': 'ES384',
               'ec-p521': 'ES512', 'ed25519': 'EdDSA'}

t = Tap()


def copy_cli(dirpath):
    """A copy of the CLI, with the command module it loads, in dirpath:
    for a uid that cannot reach the build tree."""
    cli_copy = os.path.join(dirpath, 'p11jwt-copy')
    if not os.path.exists(cli_copy):
        shutil.copy(CLI, cli_copy)
        os.chmod(cli_copy, 0o755)
        mod = os.path.join(dirpath, 'p11jwt-cmds.so')
        shutil.copy(os.path.join(os.path.dirname(CLI), 'p11jwt-cmds.so'), mod)
        os.chmod(mod, 0o644)
    return cli_copy


def b64u_dec(s):
    return base64.urlsafe_b64decode(s + '=' * (-len(s) % 4))


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b'=').decode()


def jwt_parts(token):
    h, p, _ = token.split('.')
    return json.loads(b64u_dec(h)), json.loads(b64u_dec(p))


def run(args, env=None, input=None, timeout=60):
    return subprocess.run(args, env=env, input=input, capture_output=True, text=True,
                          timeout=timeout)


class Agent:
    """An agent in --foreground, read until it prints its environment."""

    def __init__(self, tokdir, sock, extra=(), env=None):
        self.sock = sock
        args = [AGENT, '--foreground', '--print-env', '--module', MODULE, '--token', TOKEN_URI,
                '--socket', sock, *extra]
        if not any(a.startswith('--pin-file') for a in extra) and env is None:
            args += ['--pin-file', os.path.join(tokdir, 'pin')]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        # read stderr as it comes: with no syslog daemon (--audit auto) the
        # audit trail goes there, and a full pipe would stop the agent
        self._err = []
        self._drain = threading.Thread(target=lambda: self._err.extend(self.proc.stderr),
                                       daemon=True)
        self._drain.start()
        self.env_lines = []
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.env_lines.append(line)
            if line.startswith('P11JWT_AGENT_SOCK='):
                break
        self.ready = os.path.exists(sock) and self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stderr(self):
        """Everything the agent wrote to stderr; only once it has exited."""
        if self.proc.poll() is None:
            return '(agent still running)'
        self._drain.join(timeout=10)
        return ''.join(self._err)


def cli(*args, sock=None, input=None, env=None):
    base = [CLI]
    if sock:
        base += ['--socket', sock]
    return run(base + list(args), input=input, env=env)


class Conn:
    """A raw protocol connection."""

    def __init__(self, path, timeout=10):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b''

    def send(self, data):
        self.s.sendall(data)

    def line(self):
        while b'\n' not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError('connection closed')
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b'\n')
        return json.loads(line)

    def req(self, obj):
        self.send(json.dumps(obj, separators=(',', ':')).encode() + b'\n')
        return self.line()

    def at_eof(self):
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def main():
    work = tempfile.mkdtemp(prefix='itest-', dir=os.path.join(BUILD, 'tests'))
    tokdir = os.path.join(work, 'token')
    r = run([MKTOKEN, tokdir], timeout=180)
    if not t.ok(r.returncode == 0, 'mktoken makes the test token', r.stdout + r.stderr):
        t.done()
    last = r.stdout.strip().splitlines()[-1]
    t.eq(last, f'export SOFTHSM2_CONF={tokdir}/softhsm2.conf', 'mktoken ends with the export line')
    os.environ['SOFTHSM2_CONF'] = os.path.join(tokdir, 'softhsm2.conf')
    pin = open(os.path.join(tokdir, 'pin')).read().strip()
    t.eq(stat.S_IMODE(os.stat(os.path.join(tokdir, 'pin')).st_mode), 0o600, 'pin file is 0600')

    r = run([MKTOKEN, tokdir])
    t.ok(r.returncode != 0 and 'force' in (r.stderr + r.stdout),
         'mktoken refuses to overwrite an existing token dir without --force', r.stderr)

    # Sockets live under /tmp: short paths (sun_path holds 108 bytes), and a
    # parent any uid can traverse, which the other-uid test needs wherever
    # the build tree is.
    sockdir = tempfile.mkdtemp(prefix='p11jwt-it-', dir='/tmp')
    sock = os.path.join(sockdir, 'run', 'agent.sock')
    agent = Agent(tokdir, sock)
    if not t.ok(agent.ready, 'agent starts in the foreground and listens',
                None if agent.ready else agent.stderr()):
        t.done()
    try:
        test_with_agent(agent, tokdir, sock, pin, work)
    finally:
        rc = agent.stop()
        t.eq(rc, 0, 'agent exits 0 on SIGTERM')
        t.ok(not os.path.exists(sock), 'agent removes its socket on exit')

    test_startup_errors(tokdir, work, pin)
    test_connection_cap(tokdir, work)
    test_event_loop(tokdir, work)
    test_one_worker_turns(tokdir, work)
    test_detached(tokdir, work)
    test_dpop(tokdir, work)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(sockdir, ignore_errors=True)
    t.done()


def test_with_agent(agent, tokdir, sock, pin, work):
    env_text = ''.join(agent.env_lines)
    t.ok(f'P11JWT_AGENT_SOCK={sock}; export P11JWT_AGENT_SOCK;' in env_text,
         '--print-env prints the socket in ssh-agent style', env_text)

    st = os.stat(sock)
    t.eq(stat.S_IMODE(st.st_mode), 0o600, 'socket is mode 0600')
    t.eq(stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode), 0o700,
         'socket directory is mode 0700')

    # keys
    r = cli('keys', '--json', sock=sock)
    keys = {}
    if t.ok(r.returncode == 0, 'p11jwt keys --json succeeds', r.stderr):
        for k in json.loads(r.stdout):
            keys[k['name']] = k
    t.eq(sorted(keys), sorted(DEFAULT_ALG), 'keys lists exactly the five token keys')
    for name, alg in DEFAULT_ALG.items():
        t.eq(keys.get(name, {}).get('alg'), alg, f'default alg of {name} is {alg}')
    t.eq(keys.get('rsa-2048', {}).get('has_cert'), True, 'rsa-2048 has its certificate')
    t.eq(keys.get('rsa-2048', {}).get('bits'), 2048, 'rsa-2048 reports 2048 bits')
    t.ok(all(k.get('uri', '').startswith('pkcs11:') for k in keys.values()),
         'each key has a PKCS#11 URI')
    r = cli('keys', sock=sock)
    t.ok(r.returncode == 0 and all(n in r.stdout for n in DEFAULT_ALG),
         'p11jwt keys prints a table naming every key', r.stdout + r.stderr)

    # jwks and thumbprints, checked by the jose CLI and by hand
    r = cli('jwks', sock=sock)
    jwks = json.loads(r.stdout) if r.returncode == 0 else {'keys': []}
    t.eq(len(jwks['keys']), 5, 'jwks has five keys')
    by_kid = {j['kid']: j for j in jwks['keys']}
    for name, k in keys.items():
        jwk = by_kid.get(k['kid'])
        if not t.ok(jwk is not None, f'jwks has the kid of {name}'):
            continue
        t.ok(jwk.get('use') == 'sig' and jwk.get('alg') == k['alg'],
             f'jwk of {name} has use=sig and alg={k["alg"]}', jwk)
        t.ok(not any(m in jwk for m in ('d', 'p', 'q', 'dp', 'dq', 'qi')),
             f'jwk of {name} holds no private member')
        req = {'RSA': ('e', 'kty', 'n'), 'EC': ('crv', 'kty', 'x', 'y'),
               'OKP': ('crv', 'kty', 'x')}[jwk['kty']]
        canon = json.dumps({m: jwk[m] for m in req}, separators=(',', ':'), sort_keys=True)
        t.eq(jwk['kid'], b64u(hashlib.sha256(canon.encode()).digest()),
             f'kid of {name} is its RFC 7638 thumbprint')
        # Debian's jose 11 has no EdDSA/OKP support.
        if shutil.which('jose') and jwk['kty'] != 'OKP':
            jr = run(['jose', 'jwk', 'thp', '-i', '-'], input=json.dumps(jwk))
            t.eq(jr.stdout.strip(), jwk['kid'], f'jose jwk thp agrees on the kid of {name}')
    r = cli('jwks', '--key', 'ec-p256', sock=sock)
    t.ok(r.returncode == 0 and len(json.loads(r.stdout)['keys']) == 1,
         'jwks --key selects one key', r.stderr)
    r = cli('jwks', '--key', 'rsa-2048', '--pem', sock=sock)
    want = pyjwt.PyJWK(by_kid.get(keys.get('rsa-2048', {}).get('kid'), {}), algorithm='RS256') \
        .key.public_bytes(serialization.Encoding.PEM,
                          serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    t.eq(r.stdout, want, 'jwks --pem prints the same public key as PEM')
    r = cli('jwks', '--key', 'ec-p384', '--alg', 'ES256', sock=sock)
    t.ok(r.returncode == 4 and 'unsupported_alg' in r.stderr,
         'jwks --alg that does not fit the key is refused', r.stderr)

    # every (key, alg) signed through the CLI, verified by three verifiers
    for name, alg in PAIRS:
        jwk = by_kid.get(keys.get(name, {}).get('kid'), {})
        check_pair(sock, name, alg, jwk, work)

    # header/claims control
    # (exp within the default max_lifetime of 3600 s from now: the agent
    # refuses a later one, checked below)
    exp = int(time.time()) + 1800
    r = cli('sign', '--key', 'ec-p256', '--header', 'kid=custom', '--header', 'typ=at+jwt',
            '--claim', 'iat:=1700000000', '--claim', f'exp:={exp}', '--claim', 'jti=fixed',
            '--claim', 'aud:=["a","b"]', '--claim', 'nested:={"x":[1,2]}', sock=sock)
    if t.ok(r.returncode == 0, 'sign with caller header and claims', r.stderr):
        h, c = jwt_parts(r.stdout.strip())
        t.eq((h['kid'], h['typ'], h['alg']), ('custom', 'at+jwt', 'ES256'),
             "caller's kid and typ are kept, alg is set")
        t.eq((c['iat'], c['exp'], c['jti'], c['aud'], c['nested']),
             (1700000000, exp, 'fixed', ['a', 'b'], {'x': [1, 2]}),
             "caller's iat, exp, jti and JSON claims are kept as sent")
    r = cli('sign', '--key', 'ec-p256', '--claim', 'exp:=4102444800', sock=sock)
    t.ok(r.returncode == 4 and 'policy_violation' in r.stderr and 'max_lifetime 3600' in r.stderr,
         'an exp beyond the default max_lifetime (3600 s) is refused', r.stderr)

    claims_file = os.path.join(work, 'claims.json')
    with open(claims_file, 'w') as f:
        json.dump({'iss': 'from-file', 'sub': 'file-sub', 'scope': 'a b'}, f)
    r = cli('sign', '--key', 'ed25519', '--claims-file', claims_file, '--claim', 'sub=cli-sub',
            '--lifetime', '120', sock=sock)
    if t.ok(r.returncode == 0, 'sign with --claims-file and --lifetime', r.stderr):
        h, c = jwt_parts(r.stdout.strip())
        t.eq((c['iss'], c['sub'], c['scope']), ('from-file', 'cli-sub', 'a b'),
             'command-line claims override the file')
        t.eq(c['exp'] - c['iat'], 120, 'lifetime sets exp = iat + 120')
        t.ok(abs(c['iat'] - time.time()) < 30, 'iat is now')
        t.ok(len(c['jti']) == 36 and c['jti'][14] == '4', 'jti is a UUID v4', c['jti'])

    # certificate thumbprints in the header
    check_x5(sock, tokdir, pin, by_kid.get(keys.get('rsa-2048', {}).get('kid'), {}), work)

    # errors through the CLI
    r = cli('sign', '--key', 'ec-p384', '--alg', 'ES256', sock=sock)
    t.ok(r.returncode == 4 and 'unsupported_alg' in r.stderr,
         'ES256 with a P-384 key is refused with unsupported_alg (exit 4)', r.stderr)
    r = cli('sign', '--key', 'no-such-key', sock=sock)
    t.ok(r.returncode == 4 and 'p11jwt: unknown_key:' in r.stderr,
         'unknown key is refused with unknown_key (exit 4)', r.stderr)
    r = cli('sign', '--key', 'ec-p256', '--claim', 'bad:=[1,', sock=sock)
    t.ok(r.returncode == 2 and 'bad' in r.stderr, 'invalid k:=JSON is a usage error (exit 2)',
         r.stderr)
    r = cli('sign', '--key', 'ec-p256', '--x5t', sock=sock)
    t.ok(r.returncode == 4 and 'bad_request' in r.stderr,
         '--x5t on a key without certificate is refused', r.stderr)
    r = cli('keys', sock=os.path.join(work, 'nothing-here.sock'))
    t.ok(r.returncode == 3 and 'nothing-here.sock' in r.stderr,
         'unreachable agent: exit 3 naming the socket', r.stderr)

    # decode / verify
    jwks_file = os.path.join(work, 'jwks.json')
    with open(jwks_file, 'w') as f:
        json.dump(jwks, f)
    r = cli('sign', '--key', 'ec-p256', '--claim', 'sub=alice', sock=sock)
    token = r.stdout.strip()
    r = cli('verify', token, '--jwks', jwks_file)
    t.ok(r.returncode == 0, 'p11jwt verify accepts a fresh JWT', r.stdout + r.stderr)
    h, p, s = token.split('.')
    forged = '.'.join([h, b64u(json.dumps({'sub': 'mallory'}).encode()), s])
    r = cli('verify', forged, '--jwks', jwks_file)
    t.ok(r.returncode == 1 and 'verify' in r.stderr,
         'p11jwt verify rejects a changed payload (exit 1)', r.stderr)
    # a crit extension the verifier does not implement (issue 15)
    r = cli('sign', '--key', 'ec-p256', '--header', 'crit:=["urn:x-unknown"]',
            '--header', 'urn:x-unknown:=true', sock=sock)
    r = cli('verify', r.stdout.strip(), '--jwks', jwks_file)
    t.ok(r.returncode == 1 and 'bad_jwt' in r.stderr and '"urn:x-unknown"' in r.stderr,
         'p11jwt verify refuses a JWT whose crit names an unknown extension', r.stderr)
    r = cli('sign', '--key', 'ec-p256', '--claim', 'iat:=1000000000', '--claim',
            'exp:=1000000300', sock=sock)
    r = cli('verify', r.stdout.strip(), '--jwks', jwks_file)
    t.ok(r.returncode == 1 and 'expired' in r.stderr.lower(),
         'p11jwt verify rejects an expired JWT', r.stderr)
    # a JWT signed with a non-default alg verifies against the JWKS exported
    # for that alg, and not against the default one (the JWK's alg binds)
    r = cli('sign', '--key', 'rsa-2048', '--alg', 'PS512', sock=sock)
    ps = r.stdout.strip()
    ps_jwks = os.path.join(work, 'jwks-ps512.json')
    with open(ps_jwks, 'w') as f:
        f.write(cli('jwks', '--key', 'rsa-2048', '--alg', 'PS512', sock=sock).stdout)
    r = cli('verify', ps, '--jwks', ps_jwks)
    t.ok(r.returncode == 0, 'PS512 JWT verifies against jwks --alg PS512', r.stderr)
    r = cli('verify', ps, '--jwks', jwks_file)
    t.ok(r.returncode == 1 and 'RS256' in r.stderr,
         'PS512 JWT is refused by a JWKS that binds the key to RS256', r.stderr)
    r = cli('decode', token)
    t.ok(r.returncode == 0 and 'alice' in r.stdout and 'UTC' in r.stdout,
         'p11jwt decode prints claims and UTC times', r.stdout + r.stderr)

    # the raw protocol
    check_protocol(sock)
    check_other_uid(sock)


def check_pair(sock, name, alg, jwk, work):
    aud = 'https://auth.example.test/oauth2/token'
    r = cli('sign', '--key', name, '--alg', alg, '--claim', 'iss=client-1',
            '--claim', 'sub=client-1', '--claim', f'aud={aud}', sock=sock)
    if not t.ok(r.returncode == 0 and r.stdout.count('.') == 2,
                f'{name}/{alg}: p11jwt sign prints a compact JWT', r.stderr):
        return
    token = r.stdout.strip()
    h, c = jwt_parts(token)
    t.ok(h.get('alg') == alg and h.get('typ') == 'JWT' and h.get('kid') == jwk.get('kid'),
         f'{name}/{alg}: header has alg, typ=JWT and the key kid', h)
    t.ok(c.get('exp', 0) - c.get('iat', 0) == 300 and 'jti' in c,
         f'{name}/{alg}: claims get iat, exp=iat+300, jti', c)

    key = pyjwt.PyJWK(jwk, algorithm=alg).key
    pem = key.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    pem_file = os.path.join(work, f'{name}.pem')
    with open(pem_file, 'wb') as f:
        f.write(pem)
    rr = run([OSSL_VERIFY, token, pem_file])
    t.ok(rr.returncode == 0, f'{name}/{alg}: OpenSSL verifies the signature', rr.stderr)
    bad = token[:-6] + ('AAAAAA' if not token.endswith('AAAAAA') else 'BBBBBB')
    rr = run([OSSL_VERIFY, bad, pem_file])
    t.ok(rr.returncode != 0, f'{name}/{alg}: OpenSSL rejects a damaged signature')
    try:
        claims = pyjwt.decode(token, key=key, algorithms=[alg], audience=aud)
        t.eq(claims['sub'], 'client-1', f'{name}/{alg}: PyJWT verifies the JWT')
    except Exception as e:  # noqa: BLE001
        t.ok(False, f'{name}/{alg}: PyJWT verifies the JWT', repr(e))
    sig = b64u_dec(token.split('.')[2])
    want = {'ES256': 64, 'ES384': 96, 'ES512': 132, 'EdDSA': 64}.get(alg, 256)
    t.eq(len(sig), want, f'{name}/{alg}: signature is {want} bytes (raw, never DER)')
    if shutil.which('jose') and alg != 'EdDSA':  # Debian's jose 11 has no EdDSA
        jf = os.path.join(work, f'{name}.jwk')
        with open(jf, 'w') as f:
            # jose enforces a JWK's alg; the JWKS names the key's default alg
            json.dump({k: v for k, v in jwk.items() if k != 'alg'}, f)
        rr = run(['jose', 'jws', 'ver', '-i', '-', '-k', jf], input=token)
        t.ok(rr.returncode == 0, f'{name}/{alg}: jose jws ver verifies the JWT', rr.stderr)


def read_cert_der(tokdir, pin):
    r = subprocess.run(['pkcs11-tool', '--module', MODULE, '--token-label', 'p11jwt-test',
                        '--read-object', '--type', 'cert', '--id', '01'],
                       capture_output=True, timeout=60)
    return r.stdout if r.returncode == 0 else b''


def check_x5(sock, tokdir, pin, jwk, work):
    der = read_cert_der(tokdir, pin)
    if not t.ok(len(der) > 100, 'certificate of rsa-2048 is readable from the token'):
        return
    cert = x509.load_der_x509_certificate(der)
    pub = cert.public_key().public_numbers()
    t.eq(b64u(pub.n.to_bytes((pub.n.bit_length() + 7) // 8, 'big')), jwk.get('n'),
         'the certificate holds the public key of rsa-2048')
    r = cli('sign', '--key', 'rsa-2048', '--x5t', '--x5t-s256', '--x5c', sock=sock)
    if not t.ok(r.returncode == 0, 'sign with --x5t --x5t-s256 --x5c', r.stderr):
        return
    h, _ = jwt_parts(r.stdout.strip())
    t.eq(h.get('x5t'), b64u(hashlib.sha1(der).digest()), 'x5t is base64url(SHA-1(cert DER))')
    t.eq(h.get('x5t#S256'), b64u(hashlib.sha256(der).digest()),
         'x5t#S256 is base64url(SHA-256(cert DER))')
    t.eq(h.get('x5c'), [base64.b64encode(der).decode()], 'x5c is [standard base64(cert DER)]')
    # the PIN goes through the environment, never argv (pkcs11-tool's env:)
    r = subprocess.run(['pkcs11-tool', '--module', MODULE, '--token-label', 'p11jwt-test',
                        '--login', '--pin', 'env:P11JWT_TEST_PIN', '--list-objects',
                        '--type', 'privkey'],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, P11JWT_TEST_PIN=pin))
    blocks = [b for b in r.stdout.split('Private Key Object') if b.strip()]
    t.eq(len(blocks), 5, 'the token holds five private keys')
    for b in blocks:
        label = next((l.split(':', 1)[1].strip() for l in b.splitlines()
                      if l.strip().startswith('label:')), '?')
        access = next((l for l in b.splitlines() if 'Access:' in l), '')
        t.ok('never extractable' in access and 'sensitive' in access,
             f'private key {label} is sensitive and never extractable', access)


def check_protocol(sock):
    c = Conn(sock)
    r = c.req({'id': 1, 'op': 'hello'})
    t.ok(r.get('ok') is True and r.get('protocol') == 1 and r.get('id') == 1, 'hello', r)
    c.send(b'this is not json\n')
    r = c.line()
    t.ok(r.get('ok') is False and r['error']['code'] == 'bad_request' and r['id'] is None,
         'not JSON: bad_request with id null', r)
    r = c.req({'id': 'x', 'op': 'fly'})
    t.ok(r['error']['code'] == 'unknown_op' and r['id'] == 'x', 'unknown op: unknown_op', r)
    r = c.req({'id': {'k': [1]}, 'op': 'sign', 'key': 'ec-p256', 'lifetime': -5})
    t.ok(r['error']['code'] == 'bad_request' and r['id'] == {'k': [1]},
         'negative lifetime: bad_request, id echoed', r)
    r = c.req({'id': 2, 'op': 'sign', 'key': 'ec-p256', 'include': ['x5t'] * 10000})
    t.ok(r['error']['code'] == 'bad_request', '10,000 include entries: bad_request', r)
    r = c.req({'id': 3, 'op': 'hello'})
    t.ok(r.get('ok') is True and r['id'] == 3, 'connection still usable after bad requests', r)

    # pipelined: three requests in one write, answers in order
    c.send(b''.join(json.dumps({'id': i, 'op': op, 'key': 'ec-p256'} if op == 'sign' else
                               {'id': i, 'op': op}).encode() + b'\n'
                    for i, op in ((10, 'sign'), (11, 'hello'), (12, 'sign'))))
    ids = [c.line().get('id') for _ in range(3)]
    t.eq(ids, [10, 11, 12], 'pipelined requests are answered in order')

    # a silent client with half a line does not delay another client
    slow = Conn(sock)
    slow.send(b'{"id": 1, "op": "hel')
    t0 = time.time()
    fast = Conn(sock)
    r = fast.req({'id': 7, 'op': 'sign', 'key': 'ed25519'})
    t.ok(r.get('ok') is True and time.time() - t0 < 5,
         'a stalled client does not delay another one', r)
    fast.close()
    slow.send(b'lo"}\n')
    t.eq(slow.line().get('ok'), True, 'the stalled client can finish its line later')
    slow.close()

    # oversized line: request_too_large, then the agent closes
    big = Conn(sock)
    try:
        big.send(b'{"id":1,"op":"hello","pad":"' + b'a' * 70000 + b'"}\n')
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        r = big.line()
        t.eq(r['error']['code'], 'request_too_large', 'line over 64 KiB: request_too_large')
        t.ok(big.at_eof(), 'the agent closes the connection after request_too_large')
    except (EOFError, ConnectionResetError) as e:
        t.ok(False, 'line over 64 KiB: request_too_large', repr(e))
        t.ok(False, 'the agent closes the connection after request_too_large')
    big.close()
    r = c.req({'id': 4, 'op': 'keys'})
    t.ok(r.get('ok') is True and len(r['keys']) == 5, 'other connections unaffected', r)
    c.close()


def check_other_uid(sock):
    if os.geteuid() != 0 or not shutil.which('setpriv'):
        t.skip('a client of another uid is refused', 'needs root and setpriv')
        return
    d = os.path.dirname(sock)
    w = os.path.dirname(d)
    old_w, old_d, old_s = os.stat(w).st_mode, os.stat(d).st_mode, os.stat(sock).st_mode
    # Open the file permissions so that only SO_PEERCRED stands in the way.
    os.chmod(w, 0o711)
    os.chmod(d, 0o711)
    os.chmod(sock, 0o666)
    # nobody may not be able to reach the build tree (a clone under /root):
    # run a copy of the CLI from the world-traversable socket area
    cli_copy = copy_cli(w)
    try:
        r = run(['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups',
                 cli_copy, '--socket', sock, 'keys'])
        t.ok(r.returncode == 4 and 'forbidden' in r.stderr,
             'a client of another uid (nobody) gets forbidden', r.stdout + r.stderr)
    finally:
        os.chmod(w, stat.S_IMODE(old_w))
        os.chmod(d, stat.S_IMODE(old_d))
        os.chmod(sock, stat.S_IMODE(old_s))


def test_startup_errors(tokdir, work, pin):
    sock = os.path.join(work, 'err', 'agent.sock')
    bad = os.path.join(work, 'badpin')
    with open(bad, 'w') as f:
        f.write('000000\n')
    os.chmod(bad, 0o600)
    a = Agent(tokdir, sock, extra=['--pin-file', bad])
    rc = a.proc.wait(timeout=30)
    err = a.stderr()
    t.ok(rc != 0 and ('pin_incorrect' in err or 'PIN_INCORRECT' in err or 'PIN incorrect' in err),
         'wrong PIN: agent refuses to start and says so', err)

    os.chmod(bad, 0o644)
    a = Agent(tokdir, sock, extra=['--pin-file', bad])
    rc = a.proc.wait(timeout=30)
    err = a.stderr()
    t.ok(rc != 0 and '600' in err, 'PIN file readable by others is refused', err)

    env = dict(os.environ, P11JWT_PIN=pin)
    a = Agent(tokdir, sock, env=env)
    ok = a.ready
    r = cli('keys', '--json', sock=sock) if ok else None
    t.ok(ok and r.returncode == 0 and len(json.loads(r.stdout)) == 5,
         'PIN from P11JWT_PIN works', a.stderr() if not ok else r.stderr)
    a.stop()

    outside = os.path.join(work, 'libsofthsm2-copy.so')
    shutil.copy(MODULE, outside)
    a = subprocess.run([AGENT, '--foreground', '--module', outside, '--token', TOKEN_URI,
                        '--pin-file', os.path.join(tokdir, 'pin'), '--socket', sock],
                       capture_output=True, text=True, timeout=30)
    t.ok(a.returncode != 0 and 'module-allow' in a.stderr,
         'a module outside /usr/lib* is refused, with the option to allow it', a.stderr)


def test_connection_cap(tokdir, work):
    sock = os.path.join(work, 'cap', 'agent.sock')
    a = Agent(tokdir, sock, extra=['--max-connections', '1',
                                   '--pin-file', os.path.join(tokdir, 'pin')])
    if not t.ok(a.ready, 'agent with --max-connections 1 starts'):
        a.stop()
        return
    first = Conn(sock)
    t.eq(first.req({'id': 1, 'op': 'hello'}).get('ok'), True, 'first client is served')
    second = Conn(sock)
    try:
        r = second.line()
        t.ok(r['error']['code'] == 'busy' and second.at_eof(),
             'a client over the connection cap gets busy and is closed', r)
    except (EOFError, ConnectionResetError) as e:
        t.ok(False, 'a client over the connection cap gets busy and is closed', repr(e))
    second.close()
    t.eq(first.req({'id': 2, 'op': 'hello'}).get('ok'), True, 'the first client is unaffected')
    first.close()
    time.sleep(0.2)
    third = Conn(sock)
    t.eq(third.req({'id': 3, 'op': 'hello'}).get('ok'), True,
         'a slot frees when a client leaves')
    third.close()
    a.stop()


def test_one_worker_turns(tokdir, work):
    """With one worker, a client that pipelines a long batch keeps the
    worker only while nobody else waits: another client's request is
    answered between two of its requests, not after the whole batch."""
    sock = os.path.join(work, 'turns', 'agent.sock')
    a = Agent(tokdir, sock, extra=['--workers', '1', '--audit', 'none'])
    if not t.ok(a.ready, 'agent with --workers 1 starts'):
        a.stop()
        return
    n = 300
    sign = {'op': 'sign', 'key': 'rsa-2048', 'claims': {'iss': 'i', 'sub': 's', 'aud': 'a'}}
    big = Conn(sock)
    got = []  # (time, id) of the batch's answers, in arrival order

    def read_batch():
        for _ in range(n):
            r = big.line()
            got.append((time.monotonic(), r.get('id') if r.get('ok') else None))

    reader = threading.Thread(target=read_batch, daemon=True)
    reader.start()
    big.send(b''.join((json.dumps(dict(sign, id=k)) + '\n').encode() for k in range(n)))
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        time.sleep(0.001)
    other = Conn(sock)
    r = other.req({'id': 'other', 'op': 'sign', 'key': 'ec-p256'})
    t_other = time.monotonic()
    reader.join(timeout=120)
    after = sum(1 for ts, _ in got if ts > t_other)
    t.ok(r.get('ok') is True and r.get('id') == 'other',
         'a second client is answered while one worker serves a pipelined batch', r)
    t.ok(after >= n // 2,
         f'... before most of that batch: {after} of its {n} answers came after it')
    t.eq([i for _, i in got], list(range(n)), 'the batch is answered in full and in order')
    other.close()
    big.close()
    a.stop()


def fd_count(pid):
    return len(os.listdir(f'/proc/{pid}/fd'))


def rss_kib(pid):
    for line in open(f'/proc/{pid}/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
    return 0


def test_event_loop(tokdir, work):
    """The epoll server: half-line timeout, clients leaving mid-request,
    idle connections, ordering under load, graceful stop."""
    sock = os.path.join(work, 'loop', 'agent.sock')
    a = Agent(tokdir, sock, extra=['--line-timeout', '1', '--workers', '3',
                                   '--pin-file', os.path.join(tokdir, 'pin')])
    if not t.ok(a.ready, 'agent with --line-timeout 1 --workers 3 starts'):
        a.stop()
        return
    pid = a.proc.pid
    sign = {'op': 'sign', 'key': 'ec-p256', 'claims': {'iss': 'i', 'sub': 's', 'aud': 'a'}}
    # warm up: the token layer opens its sessions (and SoftHSM its files) on
    # first use; the baseline is taken after that
    for key in ('ec-p256', 'rsa-2048'):
        w = Conn(sock)
        for k in range(4):
            w.send((json.dumps(dict(sign, key=key, id=k)) + '\n').encode())
        for k in range(4):
            w.line()
        w.close()
    time.sleep(0.3)
    base = fd_count(pid)

    half = Conn(sock)
    half.send(b'{"op":"hel')
    t0 = time.time()
    try:
        r = half.line()
        el = time.time() - t0
        t.ok(r['error']['code'] == 'bad_request' and 'in time' in r['error']['message'] and
             0.8 <= el < 4 and half.at_eof(),
             f'half a line is dropped after --line-timeout ({el:.1f} s) with an error line', r)
    except (EOFError, ConnectionResetError, socket.timeout) as e:
        t.ok(False, 'half a line is dropped after --line-timeout', repr(e))
    half.close()

    # an idle connection (no partial line) is not dropped
    idle = Conn(sock)
    time.sleep(1.6)
    t.eq(idle.req({'id': 'idle', 'op': 'hello'}).get('ok'), True,
         'an idle connection without a partial line is kept')
    idle.close()

    # clients that leave mid-request leave nothing behind
    for i in range(50):
        c = Conn(sock)
        c.send((json.dumps(dict(sign, id=i)) + '\n').encode() * 3)
        c.close()
    time.sleep(1.0)
    other = Conn(sock)
    t.eq(other.req(dict(sign, id='after')).get('ok'), True,
         'after 50 clients left mid-request, signing still works')
    other.close()
    time.sleep(0.3)
    t.eq(fd_count(pid), base, 'and the agent holds no more file descriptors than before')

    # many idle connections, then each of them gets its own answers in order
    rss0 = rss_kib(pid)
    conns = [Conn(sock) for _ in range(300)]
    time.sleep(0.3)
    rss1 = rss_kib(pid)
    t.ok(rss1 - rss0 < 4096, f'300 idle connections cost {rss1 - rss0} KiB (< 4 MiB)')
    for i, c in enumerate(conns):
        c.send(b''.join((json.dumps(dict(sign, id=f'{i}-{k}')) + '\n').encode()
                        for k in range(3)))
    ok = True
    for i, c in enumerate(conns):
        for k in range(3):
            r = c.line()
            ok = ok and r.get('ok') is True and r.get('id') == f'{i}-{k}'
    t.ok(ok, '300 connections x 3 pipelined requests: every answer ok and in order')
    for c in conns:
        c.close()
    time.sleep(0.5)
    t.eq(fd_count(pid), base, 'all 300 connections released')

    # SIGTERM with requests in flight: the answer being signed is sent
    c = Conn(sock)
    c.send(b''.join((json.dumps({'op': 'sign', 'key': 'rsa-2048', 'id': k,
                                 'claims': {'iss': 'x'}}) + '\n').encode() for k in range(30)))
    time.sleep(0.05)
    a.proc.send_signal(signal.SIGTERM)
    got = []
    try:
        while True:
            got.append(c.line())
    except (EOFError, ConnectionResetError, socket.timeout):
        pass
    t.ok(len(got) >= 1 and all(g.get('ok') for g in got) and
         [g['id'] for g in got] == list(range(len(got))),
         f'SIGTERM: answers in flight are delivered in order ({len(got)} of 30), then EOF')
    t.eq(a.proc.wait(timeout=15), 0, 'and the agent exits 0')
    c.close()


def test_detached(tokdir, work):
    sock = os.path.join(work, 'detached', 'agent.sock')
    audit = os.path.join(work, 'detached-audit.log')
    # in the background stderr is /dev/null: an audit trail there would be
    # lost, so the agent refuses to start (also what --audit auto does on a
    # machine with no syslog daemon)
    r = run([AGENT, '--module', MODULE, '--token', TOKEN_URI, '--pin-file',
             os.path.join(tokdir, 'pin'), '--socket', sock, '--audit', 'stderr'], timeout=60)
    t.ok(r.returncode == 2 and 'audit trail would go to stderr' in r.stderr and
         '--audit file:PATH' in r.stderr and not os.path.exists(sock),
         'background agent refuses an audit trail on stderr (exit 2)', r.stderr)
    script = f'''
set -e
eval "$({AGENT} --print-env --module {MODULE} --token {TOKEN_URI} \
        --pin-file {tokdir}/pin --socket {sock} --audit file:{audit})" >/dev/null
test "$P11JWT_AGENT_SOCK" = "{sock}"
{CLI} keys --json | /usr/bin/python3 -c 'import json,sys; assert len(json.load(sys.stdin)) == 5'
{CLI} sign --key ec-p256 --claim sub=detached >/dev/null
echo "pid=$P11JWT_AGENT_PID"
{AGENT} --kill
'''
    r = run(['bash', '-c', script], timeout=60)
    t.ok(r.returncode == 0, 'detached agent: eval --print-env, use it, --kill', r.stdout + r.stderr)
    lines = open(audit).read().splitlines() if os.path.exists(audit) else []
    t.ok(len(lines) == 1 and '"sub":"detached"' in lines[0] and '"result":"ok"' in lines[0],
         'detached agent: its audit file has the signature', lines)
    pid = next((int(l[4:]) for l in r.stdout.splitlines() if l.startswith('pid=')), None)
    gone = False
    for _ in range(50):
        if pid is None:
            break
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            gone = True
            break
        time.sleep(0.1)
    t.ok(gone, 'the detached agent is gone after --kill')


DPOP_PAIRS = [('rsa-2048', 'RS256'), ('rsa-2048', 'PS256'), ('ec-p256', 'ES256'),
              ('ec-p384', 'ES384'), ('ed25519', 'EdDSA')]


def test_dpop(tokdir, work):
    """DPoP proofs (RFC 9449, issue 18) from the real agent on SoftHSM, each
    checked with PyJWT and cryptography against the jwk in its own header;
    `p11jwt dpop` with the access token on standard input; the audit trail."""
    sockdir = tempfile.mkdtemp(prefix='p11jwt-dp-', dir='/tmp')
    sock = os.path.join(sockdir, 'run', 'agent.sock')
    audit = os.path.join(work, 'dpop-audit.log')
    htu_in = 'HTTPS://Resource.Example:443/api/v1/items?page=2#top'
    htu = 'https://resource.example/api/v1/items'
    access_token = 'Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU'
    ath = b64u(hashlib.sha256(access_token.encode()).digest())

    # off by default: an agent without --allow-dpop refuses, naming the rule
    agent = Agent(tokdir, sock, extra=['--audit', 'none'])
    try:
        if t.ok(agent.ready, 'dpop: an agent without --allow-dpop starts', agent.stderr()
                if not agent.ready else None):
            c = Conn(sock)
            r = c.req({'op': 'dpop', 'key': 'ec-p256', 'htm': 'POST', 'htu': htu})
            c.close()
            t.ok(r.get('ok') is False and r['error']['code'] == 'policy_violation' and
                 'policy dpop' in r['error']['message'],
                 'dpop: proofs are off by default (policy_violation naming the rule)', r)
    finally:
        agent.stop()

    agent = Agent(tokdir, sock, extra=['--allow-dpop', '--audit', 'file:' + audit])
    if not t.ok(agent.ready, 'dpop: the agent starts with --allow-dpop',
                None if agent.ready else agent.stderr()):
        shutil.rmtree(sockdir, ignore_errors=True)
        return
    try:
        r = cli('jwks', sock=sock)
        jwks = json.loads(r.stdout) if r.returncode == 0 else {'keys': []}
        keys = {k['name']: k for k in json.loads(cli('keys', '--json', sock=sock).stdout)}
        by_kid = {j['kid']: j for j in jwks['keys']}
        c = Conn(sock)
        jtis = set()
        for name, alg in DPOP_PAIRS:
            want_jwk = {m: v for m, v in by_kid.get(keys.get(name, {}).get('kid'), {}).items()
                        if m not in ('kid', 'alg', 'use')}
            nonce = 'n-' + alg
            r = c.req({'id': alg, 'op': 'dpop', 'key': name, 'alg': alg, 'htm': 'POST',
                       'htu': htu_in, 'nonce': nonce, 'ath': ath})
            if not t.ok(r.get('ok') is True and r.get('id') == alg,
                        f'dpop {name}/{alg}: the agent makes a proof', r):
                continue
            proof = r['jwt']
            h = pyjwt.get_unverified_header(proof)
            t.ok(h.get('typ') == 'dpop+jwt' and h.get('alg') == alg and
                 set(h) == {'typ', 'alg', 'jwk'},
                 f'dpop {name}/{alg}: header is typ dpop+jwt, alg, jwk and nothing else', h)
            jwk = h.get('jwk', {})
            t.ok(not any(m in jwk for m in ('d', 'p', 'q', 'dp', 'dq', 'qi', 'kid')),
                 f'dpop {name}/{alg}: the jwk has no private member and no kid', jwk)
            t.eq(jwk, want_jwk, f'dpop {name}/{alg}: the jwk is the key\'s JWKS entry minus '
                 'kid, alg and use')
            try:
                key = pyjwt.PyJWK(jwk, algorithm=alg).key
                claims = pyjwt.decode(proof, key=key, algorithms=[alg],
                                      options={'require': ['jti', 'iat']})
            except Exception as e:  # noqa: BLE001
                t.ok(False, f'dpop {name}/{alg}: PyJWT verifies the proof with its jwk', repr(e))
                continue
            t.ok(True, f'dpop {name}/{alg}: PyJWT verifies the proof with its jwk')
            t.eq((claims.get('htm'), claims.get('htu'), claims.get('nonce'), claims.get('ath')),
                 ('POST', htu, nonce, ath),
                 f'dpop {name}/{alg}: htm, normalised htu, nonce and ath')
            t.ok(abs(claims.get('iat', 0) - time.time()) < 60 and 'exp' not in claims,
                 f'dpop {name}/{alg}: iat is now, no exp', claims)
            jti = claims.get('jti', '')
            t.ok(len(b64u_dec(jti)) >= 16 and jti not in jtis,
                 f'dpop {name}/{alg}: jti is fresh and at least 128 bits', jti)
            jtis.add(jti)
            req_m = {'RSA': ('e', 'kty', 'n'), 'EC': ('crv', 'kty', 'x', 'y'),
                     'OKP': ('crv', 'kty', 'x')}[jwk['kty']]
            canon = json.dumps({m: jwk[m] for m in req_m}, separators=(',', ':'), sort_keys=True)
            t.eq(r.get('jkt'), b64u(hashlib.sha256(canon.encode()).digest()),
                 f'dpop {name}/{alg}: jkt is the RFC 7638 thumbprint of the jwk')
        r = c.req({'op': 'dpop', 'key': 'ec-p256', 'htm': 'POST', 'htu': htu,
                   'jwk': {'kty': 'EC'}})
        t.ok(r.get('ok') is False and r['error']['code'] == 'bad_request' and
             'jwk' in r['error']['message'], 'dpop: a client cannot put its own jwk in', r)
        r = c.req({'op': 'dpop', 'key': 'ec-p256', 'htm': 'POST', 'htu': htu,
                   'access_token': access_token})
        t.ok(r.get('ok') is False and r['error']['code'] == 'bad_request',
             'dpop: the agent refuses to receive the access token', r)
        c.close()

        # the CLI: the token on standard input, never in argv
        r = cli('dpop', '--key', 'ec-p256', '--htm', 'GET', '--htu', htu_in, '--token-file', '-',
                sock=sock, input=access_token + '\n')
        if t.ok(r.returncode == 0 and r.stdout.count('.') == 2,
                'p11jwt dpop --token-file - prints a proof', r.stderr):
            proof = r.stdout.strip()
            jwk = pyjwt.get_unverified_header(proof)['jwk']
            claims = pyjwt.decode(proof, key=pyjwt.PyJWK(jwk, algorithm='ES256').key,
                                  algorithms=['ES256'])
            t.eq((claims['htm'], claims['htu'], claims.get('ath'), 'nonce' in claims),
                 ('GET', htu, ath, False), 'p11jwt dpop: htm, htu and the ath of the token')
        tf = os.path.join(work, 'dpop-token')
        with open(tf, 'w') as f:
            f.write(access_token)
        r = cli('dpop', '--key', 'ed25519', '--htm', 'POST', '--htu', htu, '--token-file', tf,
                '--nonce', 'srv-nonce', '--json', sock=sock)
        if t.ok(r.returncode == 0, 'p11jwt dpop --token-file FILE --json', r.stderr):
            out = json.loads(r.stdout)
            _, claims = jwt_parts(out['jwt'])
            t.ok(out.get('jkt') == keys['ed25519']['kid'] and claims.get('ath') == ath and
                 claims.get('nonce') == 'srv-nonce' and out.get('htu') == htu,
                 'p11jwt dpop --json: jwt, jkt, the nonce and ath', out)
        r = cli('dpop', '--key', 'ec-p256', '--htm', 'GET', '--htu', htu, sock=sock)
        t.ok(r.returncode == 0 and 'ath' not in jwt_parts(r.stdout.strip())[1],
             'p11jwt dpop without a token: no ath', r.stderr)
        r = cli('dpop', '--key', 'ec-p256', '--htm', 'GET', '--htu', htu, access_token, sock=sock)
        t.ok(r.returncode == 2 and 'never from the command line' in r.stderr,
             'p11jwt dpop refuses a token in argv (exit 2)', r.stderr)
        r = cli('dpop', '--key', 'ec-p256', '--htm', 'get', '--htu', htu, sock=sock)
        t.ok(r.returncode == 4 and 'bad_request' in r.stderr and 'case-sensitive' in r.stderr,
             'p11jwt dpop: a lower-case method is refused (exit 4)', r.stderr)
        r = cli('dpop', '--key', 'ec-p256', '--htm', 'GET', '--htu', 'https://u:p@a.example/',
                sock=sock)
        t.ok(r.returncode == 4 and 'userinfo' in r.stderr,
             'p11jwt dpop: an htu with userinfo is refused (exit 4)', r.stderr)
    finally:
        rc = agent.stop()
        t.eq(rc, 0, 'dpop: the agent exits 0')
    text = open(audit).read() if os.path.exists(audit) else ''
    recs = [json.loads(line) for line in text.splitlines()]
    dp = [a for a in recs if a.get('op') == 'dpop']
    ok = [a for a in dp if a.get('result') == 'ok']
    t.eq(len(ok), len(DPOP_PAIRS) + 3, 'dpop: one audit record per proof made')
    if ok:
        t.eq(list(ok[0].keys()), ['time', 'uid', 'gid', 'pid', 'op', 'key', 'alg', 'jkt', 'htm',
                                  'htu', 'jti', 'iat', 'result'], 'dpop: audit members, in order')
        t.ok(all(a['htu'] == htu and a['jkt'] for a in ok),
             'dpop: audit records hold the normalised htu and the jkt', ok)
    t.ok(access_token not in text and ath not in text and 'eyJ' not in text and 'page=2' not in text,
         'dpop: the audit trail has neither the access token, nor ath, nor a proof')
    t.ok(any(a.get('result') == 'bad_request' for a in dp),
         'dpop: refused proof requests are audited with their code')
    shutil.rmtree(sockdir, ignore_errors=True)

if __name__ == '__main__':
    main()
