#!/usr/bin/python3
"""Integration tests on a TPM 2.0: swtpm behind tpm2-abrmd, the token made by
tpm-conf/mktoken-tpm in tpm2-pkcs11's store, the real agent loading
libtpm2_pkcs11.so. Keys listed, the JWKS exported, RS256/PS256/ES256/ES384
signed in the TPM and checked by OpenSSL, PyJWT and jose; what the TPM
cannot do (EdDSA, P-521 keygen) answered with a clear error; lock, login and
a wrong PIN; `p11jwt keygen` on the TPM, with and without the resource
manager, leaving nothing loaded in the TPM.

Every case skips, with the reason, when the Debian TPM packages are not
installed (scripts/ensure-deps installs them). Environment (set by
tests/integration/meson.build): P11JWT_SRCDIR, P11JWT_BUILDDIR. Prints TAP.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_agent  # noqa: E402
from test_agent import Agent, SRC, b64u, check_pair, cli, run  # noqa: E402

import hashlib  # noqa: E402

t = test_agent.t  # one plan for the helpers of test_agent and these cases

MKTOKEN_TPM = os.path.join(SRC, 'tpm-conf', 'mktoken-tpm')
TPM_MODULE = '/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so'
TPM_URI = 'pkcs11:token=p11jwt-tpm'
KEYS = {'rsa-2048': 'RS256', 'ec-p256': 'ES256', 'ec-p384': 'ES384'}
NEEDS = ['swtpm', 'tpm2-abrmd', 'dbus-daemon', 'tpm2_ptool', 'tpm2_getcap', 'tpm2_flushcontext',
         'pkcs11-tool']
PACKAGES = ('swtpm swtpm-tools tpm2-abrmd libtss2-tcti-tabrmd0 libtss2-tcti-swtpm0 tpm2-tools '
            'libtpm2-pkcs11-1 libtpm2-pkcs11-tools')
# what is reported as skipped when the TPM stack is absent
PLANNED = ['mktoken-tpm makes the TPM token', 'keygen on the TPM makes sign-only keys',
           'keygen refusals on the TPM', 'the agent serves the TPM token', 'keys and JWKS',
           'RS256, PS256, ES256, ES384 signed in the TPM, verified by OpenSSL and PyJWT',
           'EdDSA and mismatched algs are refused clearly', 'concurrent signatures on 3 keys',
           'lock, login, wrong PIN', 'keygen without a resource manager leaves nothing loaded',
           'mktoken-tpm --stop']


def missing_stack():
    gone = [n for n in NEEDS if shutil.which(n) is None]
    if not os.path.exists(TPM_MODULE):
        gone.append(TPM_MODULE)
    return gone


def thumbprint(jwk):
    req = {'RSA': ('e', 'kty', 'n'), 'EC': ('crv', 'kty', 'x', 'y')}[jwk['kty']]
    canon = json.dumps({m: jwk[m] for m in req}, separators=(',', ':'), sort_keys=True)
    return b64u(hashlib.sha256(canon.encode()).digest())


def private_keys(pin):
    """(result, {label: (usage, access)} of the private keys, every object's label),
    as pkcs11-tool lists them."""
    r = run(['pkcs11-tool', '--module', TPM_MODULE, '--token-label', 'p11jwt-tpm', '--login',
             '--pin', 'env:P11JWT_TEST_PIN', '--list-objects'],
            env=dict(os.environ, P11JWT_TEST_PIN=pin))
    blocks = []
    for line in r.stdout.splitlines():
        if ' Object;' in line or line.startswith('Data object'):
            blocks.append({'kind': line.split(' Object;')[0], 'label': None, 'usage': '',
                           'access': ''})
        elif blocks and ':' in line:
            k, _, v = line.partition(':')
            k = k.strip().lower()
            if k in ('label', 'usage', 'access'):
                blocks[-1][k] = v.strip()
    keys = {b['label']: (b['usage'], b['access']) for b in blocks if b['kind'] == 'Private Key'}
    return r, keys, [b['label'] for b in blocks]


def transient_handles():
    r = run(['tpm2_getcap', 'handles-transient'])
    return r, [x for x in r.stdout.split() if x.startswith('0x80')]


def lsan_suppress_module(work):
    """Under ASan (run-tests), leaks inside tpm2-pkcs11 are not ours: 1.9
    leaks 66 bytes in every ECDSA C_SignInit (ssl_util_attrs_to_evp). The
    caller's suppressions plus that module, for the processes started here."""
    opts = os.environ.get('LSAN_OPTIONS', '')
    parts = [p for p in opts.split(':') if p]
    supp = os.path.join(work, 'lsan.supp')
    text = ''
    for p in parts:
        if p.startswith('suppressions='):
            try:
                text = open(p.split('=', 1)[1]).read()
            except OSError:
                pass
    with open(supp, 'w') as f:
        f.write(text + '\n# tests/integration/test_tpm.py\nleak:libtpm2_pkcs11.so\n')
    parts = [p for p in parts if not p.startswith('suppressions=')] + [f'suppressions={supp}']
    os.environ['LSAN_OPTIONS'] = ':'.join(parts)


def main():
    gone = missing_stack()
    if gone:
        for d in PLANNED:
            t.skip(d, f'TPM stack not installed ({", ".join(gone)}); Debian: {PACKAGES}')
        t.done()

    # Unix socket paths must stay short: the TPM directory lives under /tmp
    work = tempfile.mkdtemp(prefix='p11jwt-tpm-', dir='/tmp')
    tpmdir = os.path.join(work, 'tpm')
    lsan_suppress_module(work)
    t0 = time.time()
    r = run([MKTOKEN_TPM, tpmdir], timeout=120)
    if not t.ok(r.returncode == 0, 'mktoken-tpm makes the TPM token (swtpm, tpm2-abrmd, store)',
                r.stdout + r.stderr):
        run([MKTOKEN_TPM, '--stop', tpmdir])
        t.done()
    t.diag(f'TPM token made in {time.time() - t0:.1f} s')
    try:
        with_daemons(tpmdir, work, r.stdout)
    finally:
        r = run([MKTOKEN_TPM, '--stop', tpmdir])
        pids = []
        for name in ('swtpm', 'dbus', 'abrmd'):
            pids.append(os.path.exists(os.path.join(tpmdir, name + '.pid')))
        t.ok(r.returncode == 0 and not any(pids) and
             not os.path.exists(os.path.join(tpmdir, 'swtpm.sock')),
             'mktoken-tpm --stop stops the daemons and removes their sockets', r.stderr)
    shutil.rmtree(work, ignore_errors=True)
    t.done()


def with_daemons(tpmdir, work, made_out):
    env = {}
    for line in open(os.path.join(tpmdir, 'env')):
        k, _, v = line.strip().removeprefix('export ').partition('=')
        env[k] = v
    t.eq(sorted(env), ['DBUS_SESSION_BUS_ADDRESS', 'TPM2TOOLS_TCTI', 'TPM2_PKCS11_STORE',
                       'TPM2_PKCS11_TCTI'], 'DIR/env has the four variables to export')
    t.ok(made_out.strip().splitlines()[-1].startswith('export TPM2TOOLS_TCTI=tabrmd:'),
         'mktoken-tpm ends with the exports, through the resource manager', made_out)
    os.environ.update(env)
    os.environ.pop('P11JWT_PIN', None)
    pinfile = os.path.join(tpmdir, 'pin')
    pin = open(pinfile).read().strip()
    t.eq(oct(os.stat(pinfile).st_mode & 0o777), '0o600', 'the PIN file is 0600')
    r = run([MKTOKEN_TPM, tpmdir])
    t.ok(r.returncode == 2 and '--force' in r.stderr,
         'mktoken-tpm refuses a directory that holds a token, without --force', r.stderr)

    made = test_keygen(pinfile, pin, 'abrmd')
    sockdir = tempfile.mkdtemp(prefix='p11jwt-tpm-s-', dir='/tmp')
    sock = os.path.join(sockdir, 'run', 'agent.sock')
    # test_agent's Agent starts the agent on its module and token: point it
    # at the TPM's
    test_agent.MODULE, test_agent.TOKEN_URI = TPM_MODULE, TPM_URI
    agent = Agent(tpmdir, sock, extra=['--audit', 'none'])
    if t.ok(agent.ready, 'the agent starts on libtpm2_pkcs11.so and logs in',
            None if agent.ready else agent.stderr()):
        try:
            with_agent(sock, work, pin, made)
        finally:
            t.eq(agent.stop(), 0, 'the agent exits 0 on SIGTERM')
    shutil.rmtree(sockdir, ignore_errors=True)
    test_without_rm(tpmdir, pinfile, pin)


def keygen(pinfile, typ, label):
    return cli('keygen', '--module', TPM_MODULE, '--token', TPM_URI, '--pin-file', pinfile,
               '--type', typ, '--label', label)


def test_keygen(pinfile, pin, how):
    """keygen on the TPM: sign-only pairs, and the refusals."""
    made = {}
    for typ, label, alg in (('ec:P-256', 'kg-p256', 'ES256'), ('rsa:2048', 'kg-rsa2048', 'RS256')):
        r = keygen(pinfile, typ, label)
        if not t.ok(r.returncode == 0, f'keygen {typ} on the TPM ({how}) makes {label}',
                    r.stderr):
            continue
        out = json.loads(r.stdout)
        made[label] = out
        jwk = out.get('jwk', {})
        t.ok(out.get('kid') == thumbprint(jwk) and jwk.get('alg') == alg,
             f'{label}: kid is the thumbprint, alg {alg}', out)
        t.ok(any('is a TPM' in w and 'sign-only' in w for w in out.get('warnings', [])) and
             'p11jwt: warning: ' in r.stderr and 'CKA_VERIFY false' in r.stderr,
             f"{label}: the TPM's public key usage is a warning on stderr and in the JSON",
             r.stdout + r.stderr)
    r, keys, _ = private_keys(pin)
    for label in made:
        usage, access = keys.get(label, ('?', '?'))
        t.eq(usage, 'sign', f'{label}: the TPM private key is sign-only (no decrypt)')
        t.ok('never extractable' in access and 'sensitive' in access and
             'extractable' not in access.replace('never extractable', ''),
             f'{label}: sensitive and never extractable', access)

    r = keygen(pinfile, 'ed25519', 'kg-ed')
    t.ok(r.returncode != 0 and 'unsupported_alg' in r.stderr and
         'cannot generate ed25519' in r.stderr and r.stdout == '',
         'keygen ed25519 on the TPM: unsupported_alg, the TPM has no Ed25519', r.stderr)
    r = keygen(pinfile, 'ec:P-521', 'kg-p521')
    t.ok(r.returncode != 0 and 'unsupported_alg' in r.stderr and 'is a TPM' in r.stderr and
         'ec:P-384' in r.stderr, 'keygen ec:P-521 on the TPM is refused before the TPM is asked',
         r.stderr)
    r = keygen(pinfile, 'ec:P-256', 'ec-p256')
    t.ok(r.returncode == 2 and "labelled 'ec-p256'" in r.stderr,
         'keygen refuses a label the TPM token holds (exit 2)', r.stderr)
    r, _, labels = private_keys(pin)
    t.ok(r.returncode == 0 and not {'kg-ed', 'kg-p521'} & set(labels) and
         labels.count('ec-p256') == 2,
         'the refused keygens left no object in the store', r.stdout + r.stderr)
    return made


def with_agent(sock, work, pin, made):
    r = cli('keys', '--json', sock=sock)
    keys = {k['name']: k for k in json.loads(r.stdout)} if r.returncode == 0 else {}
    want = dict(KEYS, **{label: out['jwk']['alg'] for label, out in made.items()})
    t.eq({n: k.get('alg') for n, k in keys.items()}, want,
         'keys lists the three mktoken-tpm keys and the keygen ones, with their algs')
    r = cli('jwks', sock=sock)
    jwks = json.loads(r.stdout)['keys'] if r.returncode == 0 else []
    by_kid = {j['kid']: j for j in jwks}
    t.ok(len(jwks) == len(want) and all(j['kid'] == thumbprint(j) and 'd' not in j
                                        for j in jwks),
         'the JWKS has every key, kid = RFC 7638 thumbprint, no private member', r.stdout)
    for label, out in made.items():
        t.eq(by_kid.get(out['kid'], {}).get('x', by_kid.get(out['kid'], {}).get('n')),
             out['jwk'].get('x', out['jwk'].get('n')),
             f'{label}: the agent serves the public key keygen printed')

    # signed in the TPM, checked by OpenSSL, PyJWT and jose (check_pair)
    pairs = [('rsa-2048', 'RS256'), ('rsa-2048', 'PS256'), ('ec-p256', 'ES256'),
             ('ec-p384', 'ES384'), ('kg-p256', 'ES256'), ('kg-rsa2048', 'PS256')]
    for name, alg in pairs:
        if name not in keys:
            t.skip(f'{name}/{alg} on the TPM', 'key was not made')
            continue
        check_pair(sock, name, alg, by_kid.get(keys[name]['kid'], {}), work)

    # what the TPM cannot do: a clear error at once, no crash, no hang
    for name, alg, what in (('ec-p256', 'EdDSA', 'EdDSA'), ('rsa-2048', 'EdDSA', 'EdDSA'),
                            ('ec-p256', 'ES384', 'ES256')):
        t0 = time.time()
        r = cli('sign', '--key', name, '--alg', alg, sock=sock)
        t.ok(r.returncode == 4 and 'unsupported_alg' in r.stderr and what in r.stderr and
             time.time() - t0 < 10, f'{alg} on {name}: unsupported_alg naming what fits',
             r.stderr)
    r = cli('keys', sock=sock)
    t.eq(r.returncode, 0, 'the agent still answers after the refusals')

    # three keys at once: the resource manager swaps them in and out
    errors = []

    def signer(name):
        for _ in range(4):
            rr = cli('sign', '--key', name, sock=sock)
            if rr.returncode != 0:
                errors.append(f'{name}: {rr.stderr.strip()}')
    threads = [threading.Thread(target=signer, args=(n,)) for n in KEYS]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    t.eq(errors, [], '12 concurrent signatures with rsa-2048, ec-p256 and ec-p384 all succeed')

    # the PIN lifecycle on the TPM
    r = cli('lock', sock=sock)
    t.ok(r.returncode == 0 and 'locked' in r.stderr, 'p11jwt lock on the TPM token', r.stderr)
    r = cli('sign', '--key', 'ec-p256', sock=sock)
    t.ok(r.returncode == 4 and 'pin_required' in r.stderr, 'locked: sign answers pin_required',
         r.stderr)
    r = cli('keys', sock=sock)
    t.ok(r.returncode == 0 and all(n in r.stdout for n in KEYS),
         'locked: the keys are still listed', r.stdout + r.stderr)
    r = cli('login', sock=sock, input='not-the-pin\n')
    t.ok(r.returncode == 4 and 'pin_incorrect' in r.stderr, 'login with a wrong PIN: pin_incorrect',
         r.stderr)
    r = cli('login', sock=sock, input='not-the-pin\n')
    t.ok(r.returncode == 4 and 'already rejected' in r.stderr,
         'the same wrong PIN again is refused without asking the TPM', r.stderr)
    r = cli('login', sock=sock, input=pin + '\n')
    t.ok(r.returncode == 0 and 'ready' in r.stderr, 'login with the PIN on stdin', r.stderr)
    bad = [n for n in want if cli('sign', '--key', n, sock=sock).returncode != 0]
    t.eq(bad, [], 'after login every key signs again (the TPM loads them anew)')


def test_without_rm(tpmdir, pinfile, pin):
    """Straight to swtpm, as on a machine without tpm2-abrmd: whatever keygen
    does, successful or refused, it must leave no object loaded in the TPM,
    or the next login finds the TPM full ("out of memory for object
    contexts")."""
    pid = open(os.path.join(tpmdir, 'abrmd.pid')).read().strip()
    os.kill(int(pid), 15)  # tpm2-abrmd, started by mktoken-tpm for this test
    for _ in range(50):
        if not os.path.exists(f'/proc/{pid}'):
            break
        time.sleep(0.1)
    direct = f'swtpm:path={tpmdir}/swtpm.sock'
    os.environ['TPM2_PKCS11_TCTI'] = os.environ['TPM2TOOLS_TCTI'] = direct
    r = run(['tpm2_flushcontext', '-t'])
    r, handles = transient_handles()
    if not t.ok(r.returncode == 0 and handles == [],
                'straight to swtpm: the TPM starts with no transient object', r.stdout + r.stderr):
        return
    steps = [('ec:P-256', 'nr-p256', 0), ('ed25519', 'nr-ed', 1), ('ec:P-521', 'nr-p521', 1),
             ('ec:P-256', 'nr-p256', 2), ('rsa:2048', 'nr-rsa', 0)]
    for typ, label, want in steps:
        r = keygen(pinfile, typ, label)
        ok = r.returncode == 0 if want == 0 else r.returncode != 0
        if want == 2:
            ok = r.returncode == 2
        _, handles = transient_handles()
        t.ok(ok and handles == [],
             f'without a resource manager, keygen {typ} {label} '
             f'({"made" if want == 0 else "refused"}) leaves no object loaded in the TPM',
             f'exit {r.returncode}, transient handles {handles}\n{r.stderr}')
    _, keys, _ = private_keys(pin)
    t.ok(keys.get('nr-p256', ('',))[0] == 'sign' and keys.get('nr-rsa', ('',))[0] == 'sign',
         'without a resource manager too, the keygen keys are sign-only', keys)


if __name__ == '__main__':
    main()
