#!/usr/bin/python3
"""Integration tests of the key lifecycle commands (p11jwt keygen, csr, cert)
on a fresh SoftHSM token: keys generated through the CLI, then served by the
real agent, with every JWT, request and certificate checked by tools we did
not write (the OpenSSL command line, PyJWT, pkcs11-tool).

Environment (set by tests/integration/meson.build): P11JWT_SRCDIR,
P11JWT_BUILDDIR. Prints TAP.
"""
import base64
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_agent  # noqa: E402
from test_agent import (Agent, BUILD, MKTOKEN, MODULE, OSSL_VERIFY, TOKEN_URI,  # noqa: E402
                        b64u, cli, jwt_parts, run)

import jwt as pyjwt  # noqa: E402  (Debian python3-jwt)
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

# test_agent's helpers report to its Tap: share it so that one plan counts all
t = test_agent.t

# label, --type, default alg, extra keygen options
KEYS = [
    ('adm-rsa2048', 'rsa:2048', 'RS256', ['--id', 'A1B2']),
    ('adm-rsa3072', 'rsa:3072', 'RS256', []),
    ('adm-rsa4096', 'rsa:4096', 'RS256', []),
    ('adm-p256', 'ec:P-256', 'ES256', []),
    ('adm-p384', 'ec:P-384', 'ES384', []),
    ('adm-p521', 'ec:P-521', 'ES512', []),
    ('adm-ed25519', 'ed25519', 'EdDSA', []),
]
# one of each kind (and curve) for csr and cert
CERT_KEYS = [('adm-rsa2048', 'sha256WithRSAEncryption'), ('adm-p256', 'ecdsa-with-SHA256'),
             ('adm-p384', 'ecdsa-with-SHA384'), ('adm-p521', 'ecdsa-with-SHA512'),
             ('adm-ed25519', 'ED25519')]
STORED = ('adm-ed25519', 'adm-p384', 'adm-rsa2048')


def thumbprint(jwk):
    req = {'RSA': ('e', 'kty', 'n'), 'EC': ('crv', 'kty', 'x', 'y'),
           'OKP': ('crv', 'kty', 'x')}[jwk['kty']]
    canon = json.dumps({m: jwk[m] for m in req}, separators=(',', ':'), sort_keys=True)
    return b64u(hashlib.sha256(canon.encode()).digest())


def pubkey_der_from_cert(pem):
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def pubkey_der_from_jwk(jwk, alg):
    return pyjwt.PyJWK(jwk, algorithm=alg).key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def main():
    work = tempfile.mkdtemp(prefix='itest-admin-', dir=os.path.join(BUILD, 'tests'))
    tokdir = os.path.join(work, 'token')
    r = run([MKTOKEN, tokdir], timeout=180)
    if not t.ok(r.returncode == 0, 'mktoken makes a fresh token', r.stdout + r.stderr):
        t.done()
    os.environ['SOFTHSM2_CONF'] = os.path.join(tokdir, 'softhsm2.conf')
    os.environ.pop('P11JWT_PIN', None)
    pinfile = os.path.join(tokdir, 'pin')
    pin = open(pinfile).read().strip()
    tok = ['--module', MODULE, '--token', TOKEN_URI, '--pin-file', pinfile]

    made = test_keygen(tok, work, pinfile, pin)
    test_keygen_refusals(tok, work, pinfile, pin)
    check_token_objects(pin, made)
    certs = test_csr_cert(tok, work, made)
    test_store(tok, work, certs)

    sockdir = tempfile.mkdtemp(prefix='p11jwt-adm-', dir='/tmp')
    sock = os.path.join(sockdir, 'run', 'agent.sock')
    agent = Agent(tokdir, sock)
    if t.ok(agent.ready, 'agent starts on the token with the generated keys',
            None if agent.ready else agent.stderr()):
        try:
            test_with_agent(sock, work, made, certs)
        finally:
            t.eq(agent.stop(), 0, 'agent exits 0 on SIGTERM')
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(sockdir, ignore_errors=True)
    t.done()


def test_keygen(tok, work, pinfile, pin):
    made = {}
    for label, typ, alg, extra in KEYS:
        r = cli('keygen', *tok, '--type', typ, '--label', label, *extra)
        if not t.ok(r.returncode == 0, f'keygen --type {typ} makes {label}', r.stderr):
            continue
        out = json.loads(r.stdout)
        jwk = out.get('jwk', {})
        made[label] = out
        t.eq(out.get('name'), label, f'{label}: keygen prints the name')
        t.ok(out.get('uri', '').startswith('pkcs11:token=p11jwt-test;') and
             f'object={label}' in out['uri'] and 'type=private' in out['uri'],
             f'{label}: keygen prints the key URI', out.get('uri'))
        t.eq(out.get('kid'), thumbprint(jwk), f'{label}: kid is the RFC 7638 thumbprint')
        t.eq((jwk.get('kid'), jwk.get('alg'), jwk.get('use')), (out.get('kid'), alg, 'sig'),
             f'{label}: JWK has kid, alg {alg} and use sig')
        t.ok(not any(m in jwk for m in ('d', 'p', 'q', 'dp', 'dq', 'qi')),
             f'{label}: JWK holds no private member')
        if extra:
            t.eq(out.get('id_hex'), 'a1b2', f'{label}: --id A1B2 is the CKA_ID')
        else:
            t.ok(len(out.get('id_hex', '')) == 16, f'{label}: random 8-byte CKA_ID',
                 out.get('id_hex'))
    # the PIN also comes from the environment (no --pin-file)
    r = cli('keygen', '--module', MODULE, '--token', TOKEN_URI, '--type', 'ec:P-256',
            '--label', 'adm-envpin', env=dict(os.environ, P11JWT_PIN=pin))
    t.ok(r.returncode == 0 and json.loads(r.stdout)['name'] == 'adm-envpin',
         'keygen takes the PIN from $P11JWT_PIN', r.stderr)
    ids = [m['id_hex'] for m in made.values()]
    t.eq(len(set(ids)), len(ids), 'every generated key has its own CKA_ID')
    return made


def test_keygen_refusals(tok, work, pinfile, pin):
    r = cli('keygen', *tok, '--type', 'ec:P-256', '--label', 'adm-p384')
    t.ok(r.returncode == 2 and "labelled 'adm-p384'" in r.stderr and 'bad_request' in r.stderr,
         'keygen refuses a label that is taken (exit 2)', r.stderr)
    r = cli('keygen', *tok, '--type', 'ec:P-256', '--label', 'adm-new', '--id', 'a1b2')
    t.ok(r.returncode == 2 and 'CKA_ID a1b2' in r.stderr,
         'keygen refuses a CKA_ID that is taken (exit 2)', r.stderr)
    r = cli('keygen', *tok, '--type', 'ec:P-256', '--label', 'adm-new', '--id', '01')
    t.ok(r.returncode == 2 and 'CKA_ID 01' in r.stderr,
         "keygen refuses the CKA_ID of mktoken's rsa-2048 (exit 2)", r.stderr)
    r = cli('keygen', *tok, '--type', 'rsa:1024', '--label', 'adm-new')
    t.ok(r.returncode == 2 and 'rsa:2048' in r.stderr, 'keygen refuses rsa:1024 (exit 2)',
         r.stderr)
    r = cli('keygen', *tok, '--type', 'ec:P-256', '--label', 'adm-new', '--id', 'xyz')
    t.ok(r.returncode == 2 and '--id' in r.stderr, 'keygen refuses a non-hex --id', r.stderr)
    r = cli('keygen', '--module', MODULE, '--type', 'ec:P-256', '--label', 'adm-new')
    t.ok(r.returncode == 2 and '--token' in r.stderr, 'keygen needs --token', r.stderr)
    loose = os.path.join(work, 'pin-0644')
    with open(loose, 'w') as f:
        f.write(pin + '\n')
    os.chmod(loose, 0o644)
    r = cli('keygen', '--module', MODULE, '--token', TOKEN_URI, '--pin-file', loose,
            '--type', 'ec:P-256', '--label', 'adm-new')
    t.ok(r.returncode == 2 and 'insecure' in r.stderr,
         'keygen refuses a PIN file others can read (exit 2)', r.stderr)
    r = cli('keygen', '--module', '/tmp/not-allowed/libx.so', '--token', TOKEN_URI,
            '--type', 'ec:P-256', '--label', 'adm-new')
    t.ok(r.returncode != 0 and 'adm-new' not in r.stdout, 'keygen refuses a module path that '
         'is not allowed', r.stderr)
    r = cli('keygen', '--help')
    t.ok(r.returncode == 0 and '--type TYPE' in r.stdout and 'ed25519' in r.stdout,
         'keygen --help documents the types', r.stdout)
    r = run(['pkcs11-tool', '--module', MODULE, '--token-label', 'p11jwt-test', '--login',
             '--pin', 'env:P11JWT_TEST_PIN', '--list-objects'],
            env=dict(os.environ, P11JWT_TEST_PIN=pin))
    t.ok(r.returncode == 0 and 'adm-new' not in r.stdout,
         'nothing was created by the refused keygens', r.stderr)


def check_token_objects(pin, made):
    r = run(['pkcs11-tool', '--module', MODULE, '--token-label', 'p11jwt-test', '--login',
             '--pin', 'env:P11JWT_TEST_PIN', '--list-objects', '--type', 'privkey'],
            env=dict(os.environ, P11JWT_TEST_PIN=pin))
    blocks = {}
    for b in r.stdout.split('Private Key Object')[1:]:
        lines = b.splitlines()
        label = next((l.split(':', 1)[1].strip() for l in lines
                      if l.strip().startswith('label:')), '?')
        blocks[label] = lines
    for label in made:
        lines = blocks.get(label)
        if not t.ok(lines is not None, f'pkcs11-tool lists the private key {label}', r.stdout):
            continue
        access = next((l for l in lines if 'Access:' in l), '')
        usage = next((l for l in lines if 'Usage:' in l), '')
        t.ok('sensitive' in access and 'always sensitive' in access and
             'never extractable' in access and
             'extractable' not in access.replace('never extractable', ''),
             f'{label}: sensitive, always sensitive, never extractable', access)
        t.eq(usage.split(':', 1)[1].strip() if usage else '', 'sign',
             f'{label}: usage is sign only (no decrypt, unwrap, derive)')


def test_csr_cert(tok, work, made):
    certs = {}
    for label, sigalg in CERT_KEYS:
        if label not in made:
            t.skip(f'csr and cert for {label}', 'key was not made')
            continue
        subject = f'/CN={label} client/O=p11jwt test'
        csr = os.path.join(work, label + '.csr')
        r = cli('csr', *tok, '--key', label, '--subject', subject, '--out', csr)
        if t.ok(r.returncode == 0 and os.path.getsize(csr) > 100, f'csr for {label}', r.stderr):
            rr = run(['openssl', 'req', '-verify', '-noout', '-in', csr])
            t.ok(rr.returncode == 0 and 'verify OK' in (rr.stdout + rr.stderr),
                 f'{label}: openssl req -verify accepts the request', rr.stdout + rr.stderr)
            rr = run(['openssl', 'req', '-noout', '-text', '-in', csr])
            t.ok(f'Signature Algorithm: {sigalg}' in rr.stdout,
                 f'{label}: the request is signed with {sigalg}', rr.stdout)
            t.ok(f'CN = {label} client, O = p11jwt test' in rr.stdout,
                 f'{label}: the request has the subject', rr.stdout)
            # the verifier can fail: one changed byte in the signed part
            raw = subprocess.run(['openssl', 'req', '-in', csr, '-outform', 'DER'],
                                 capture_output=True).stdout
            bad = bytearray(raw)
            bad[-80] ^= 0x01
            badf = os.path.join(work, label + '.bad.csr')
            with open(badf, 'wb') as f:
                f.write(bytes(bad))
            rr = run(['openssl', 'req', '-verify', '-noout', '-inform', 'DER', '-in', badf])
            t.ok(rr.returncode != 0 or 'verify OK' not in (rr.stdout + rr.stderr),
                 f'{label}: a changed request does not verify', rr.stdout + rr.stderr)
        r = cli('csr', *tok, '--key', label, '--subject', subject)
        t.ok(r.returncode == 0 and r.stdout.startswith('-----BEGIN CERTIFICATE REQUEST-----'),
             f'csr for {label} prints PEM on standard output without --out', r.stderr)

        pem = os.path.join(work, label + '.pem')
        r = cli('cert', *tok, '--key', label, '--subject', subject, '--days', '45',
                '--out', pem)
        if not t.ok(r.returncode == 0, f'cert for {label}', r.stderr):
            continue
        text = run(['openssl', 'x509', '-noout', '-text', '-in', pem]).stdout
        t.ok(f'Subject: CN = {label} client, O = p11jwt test' in text and
             f'Issuer: CN = {label} client, O = p11jwt test' in text,
             f'{label}: certificate subject and issuer', text)
        t.ok('Version: 3 (0x2)' in text, f'{label}: X.509 v3')
        t.ok('X509v3 Basic Constraints: critical' in text and 'CA:FALSE' in text,
             f'{label}: basicConstraints critical CA:FALSE', text)
        t.ok('X509v3 Key Usage: critical' in text and 'Digital Signature' in text and
             'Certificate Sign' not in text, f'{label}: keyUsage critical digitalSignature')
        t.ok('X509v3 Subject Key Identifier' in text, f'{label}: subjectKeyIdentifier')
        t.eq(text.count(f'Signature Algorithm: {sigalg}'), 2,
             f'{label}: signed with {sigalg} (inner and outer algorithm)')
        cert = x509.load_pem_x509_certificate(open(pem, 'rb').read())
        span = cert.not_valid_after - cert.not_valid_before
        t.eq(span, datetime.timedelta(days=45), f'{label}: valid for 45 days')
        now = datetime.datetime.utcnow()
        t.ok(abs((cert.not_valid_before - now).total_seconds()) < 120,
             f'{label}: notBefore is now', cert.not_valid_before)
        t.ok(cert.serial_number > 0 and cert.serial_number.bit_length() > 120,
             f'{label}: random positive 128-bit serial', cert.serial_number)
        rr = run(['openssl', 'verify', '-CAfile', pem, pem])
        t.ok(rr.returncode == 0 and ': OK' in rr.stdout,
             f'{label}: openssl verify -CAfile cert cert succeeds', rr.stdout + rr.stderr)
        rr = run(['openssl', 'x509', '-noout', '-checkend', str(44 * 86400), '-in', pem])
        t.ok(rr.returncode == 0, f'{label}: still valid in 44 days')
        rr = run(['openssl', 'x509', '-noout', '-checkend', str(46 * 86400), '-in', pem])
        t.ok(rr.returncode != 0, f'{label}: expired in 46 days')
        certs[label] = open(pem).read()
    r = cli('cert', *tok, '--key', 'adm-p256', '--subject', '/CN=x', '--days', '0')
    t.ok(r.returncode == 2 and '--days' in r.stderr, 'cert refuses --days 0', r.stderr)
    r = cli('cert', *tok, '--key', 'adm-p256', '--subject', 'CN=x', '--days', '1')
    t.ok(r.returncode == 2 and 'subject' in r.stderr, 'cert refuses a subject without /',
         r.stderr)
    r = cli('csr', *tok, '--key', 'no-such-key', '--subject', '/CN=x')
    t.ok(r.returncode == 2 and 'no-such-key' in r.stderr and r.stdout == '',
         'csr for an unknown key fails with exit 2', r.stderr)
    return certs


def test_store(tok, work, certs):
    for label in STORED:
        pem = os.path.join(work, label + '-stored.pem')
        r = cli('cert', *tok, '--key', label, '--subject', f'/CN={label} stored', '--days',
                '30', '--store', '--out', pem)
        if t.ok(r.returncode == 0 and 'stored' in r.stderr, f'cert --store for {label}',
                r.stderr):
            certs[label + '/stored'] = open(pem).read()
        r = cli('cert', *tok, '--key', label, '--subject', '/CN=again', '--days', '30',
                '--store')
        t.ok(r.returncode == 2 and 'already holds a certificate' in r.stderr and
             r.stdout == '', f'a second cert --store for {label} is refused (exit 2)',
             r.stderr)


def test_with_agent(sock, work, made, certs):
    r = cli('keys', '--json', sock=sock)
    keys = {k['name']: k for k in json.loads(r.stdout)} if r.returncode == 0 else {}
    for label, out in made.items():
        k = keys.get(label)
        if not t.ok(k is not None, f'the agent serves {label}', r.stdout + r.stderr):
            continue
        t.eq((k.get('kid'), k.get('id_hex')), (out['kid'], out['id_hex']),
             f'{label}: keys --json shows the kid and id_hex keygen printed')
        t.eq(k.get('has_cert'), label in STORED, f'{label}: has_cert is {label in STORED}')
    t.eq(keys.get('rsa-2048', {}).get('id_hex'), '01', "mktoken's rsa-2048 has id_hex 01")
    r = cli('keys', sock=sock)
    line = next((l for l in r.stdout.splitlines() if l.startswith('adm-ed25519 ')), '')
    t.ok(line.rstrip().endswith('yes'), 'p11jwt keys shows the stored certificate', r.stdout)

    r = cli('jwks', sock=sock)
    jwks = json.loads(r.stdout) if r.returncode == 0 else {'keys': []}
    by_kid = {j['kid']: j for j in jwks['keys']}

    # every new key signs through the agent; OpenSSL and PyJWT verify
    for label, typ, alg, _ in KEYS + [('adm-envpin', 'ec:P-256', 'ES256', [])]:
        if label not in made:
            continue
        jwk = by_kid.get(made[label]['kid'])
        if not t.ok(jwk is not None, f'{label}: the JWKS has its kid'):
            continue
        t.eq({m: jwk[m] for m in jwk if m not in ('kid', 'alg', 'use')},
             {m: v for m, v in made[label]['jwk'].items() if m not in ('kid', 'alg', 'use')},
             f'{label}: the JWKS has the public key keygen printed')
        r = cli('sign', '--key', label, '--claim', 'sub=admin-test', sock=sock)
        if not t.ok(r.returncode == 0, f'{label}: p11jwt sign', r.stderr):
            continue
        token = r.stdout.strip()
        h, c = jwt_parts(token)
        t.eq((h.get('alg'), h.get('kid')), (alg, made[label]['kid']),
             f'{label}: header alg {alg} and kid')
        pem = os.path.join(work, label + '.pub.pem')
        with open(pem, 'w') as f:
            f.write(cli('jwks', '--key', label, '--pem', sock=sock).stdout)
        rr = run([OSSL_VERIFY, token, pem])
        t.ok(rr.returncode == 0, f'{label}: OpenSSL CLI verifies the JWT', rr.stderr)
        try:
            key = pyjwt.PyJWK(jwk, algorithm=alg).key
            claims = pyjwt.decode(token, key=key, algorithms=[alg],
                                  options={'verify_aud': False})
            t.eq(claims.get('sub'), 'admin-test', f'{label}: PyJWT verifies the JWT')
        except Exception as e:  # noqa: BLE001
            t.ok(False, f'{label}: PyJWT verifies the JWT', repr(e))
        h2, p2, s2 = token.split('.')
        forged = '.'.join([h2, b64u(json.dumps({'sub': 'mallory'}).encode()), s2])
        rr = run([OSSL_VERIFY, forged, pem])
        t.ok(rr.returncode != 0, f'{label}: OpenSSL rejects a changed payload')

    # the certificates hold the keys the agent serves
    for label, _ in CERT_KEYS:
        for name in (label, label + '/stored'):
            if name not in certs or label not in made:
                continue
            jwk = by_kid.get(made[label]['kid'], {})
            alg = jwk.get('alg', 'none')
            t.eq(pubkey_der_from_cert(certs[name]), pubkey_der_from_jwk(jwk, alg),
                 f'{name}: the certificate holds the public key of the JWKS')

    # x5t#S256 / x5t / x5c of a stored certificate
    for label in STORED:
        if label + '/stored' not in certs:
            continue
        der = x509.load_pem_x509_certificate(certs[label + '/stored'].encode()).public_bytes(
            serialization.Encoding.DER)
        r = cli('sign', '--key', label, '--x5t-s256', '--x5t', '--x5c', sock=sock)
        if not t.ok(r.returncode == 0, f'{label}: sign --x5t-s256 --x5t --x5c', r.stderr):
            continue
        h, _ = jwt_parts(r.stdout.strip())
        t.eq(h.get('x5t#S256'), b64u(hashlib.sha256(der).digest()),
             f'{label}: x5t#S256 is the SHA-256 of the stored certificate')
        t.eq(h.get('x5t'), b64u(hashlib.sha1(der).digest()),
             f'{label}: x5t is the SHA-1 of the stored certificate')
        t.eq(h.get('x5c'), [base64.b64encode(der).decode()], f'{label}: x5c is the certificate')
    r = cli('sign', '--key', 'adm-p256', '--x5t-s256', sock=sock)
    t.ok(r.returncode == 4, 'a key whose certificate was not stored has no x5t#S256', r.stderr)

    # jwks --kid
    r = cli('jwks', '--kid', 'id', sock=sock)
    if t.ok(r.returncode == 0, 'jwks --kid id', r.stderr):
        got = {j['x' if 'x' in j else 'n']: j['kid'] for j in json.loads(r.stdout)['keys']}
        for label, out in made.items():
            jwk = out['jwk']
            t.eq(got.get(jwk['x' if 'x' in jwk else 'n']), out['id_hex'],
                 f'jwks --kid id: kid of {label} is its CKA_ID in hex')
    r = cli('jwks', '--kid', 'label', '--key', 'adm-p384', '--alg', 'ES384', sock=sock)
    if t.ok(r.returncode == 0, 'jwks --kid label --key adm-p384', r.stderr):
        ks = json.loads(r.stdout)['keys']
        t.eq([(k['kid'], k['alg']) for k in ks], [('adm-p384', 'ES384')],
             'jwks --kid label: kid is the label')
    r = cli('jwks', '--kid', 'serial', sock=sock)
    t.ok(r.returncode == 2 and '--kid' in r.stderr, 'jwks --kid serial is a usage error',
         r.stderr)
    r = cli('jwks', '--help')
    t.ok('--header kid=' in r.stdout, 'jwks --help says to send the same kid in JWT headers',
         r.stdout)
    # a JWT with kid=id verifies against the JWKS exported with --kid id
    idkid = made.get('adm-rsa2048', {}).get('id_hex', 'a1b2')
    jf = os.path.join(work, 'jwks-id.json')
    with open(jf, 'w') as f:
        f.write(cli('jwks', '--kid', 'id', sock=sock).stdout)
    r = cli('sign', '--key', 'adm-rsa2048', '--header', f'kid={idkid}', sock=sock)
    rr = cli('verify', r.stdout.strip(), '--jwks', jf)
    t.ok(r.returncode == 0 and rr.returncode == 0,
         'a JWT with --header kid=<id> verifies against jwks --kid id', r.stderr + rr.stderr)


if __name__ == '__main__':
    main()
