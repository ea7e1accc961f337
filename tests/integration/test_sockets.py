#!/usr/bin/python3
"""The socket trust rule (common/sockdir.h, docs/security.md), with real
second and third uids: a socket another user planted never gets a PIN.

- The CLI's /tmp/p11jwt-UID fallback, made first by another user (nobody)
  with a listener that logs every byte: `p11jwt login` refuses, names the
  directory, its owner and mode, and the listener reads nothing.
- A listener of another uid in a directory the CLI trusts: refused by its
  SO_PEERCRED uid, unless that uid is named with --agent-uid or
  P11JWT_AGENT_UID (an agent running as a service user).
- The agent holds its own directory to the same rule.

Needs root and setpriv (the other uids); skips otherwise. Prints TAP.
"""
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import Tap  # noqa: E402
from test_agent import (AGENT, BUILD, MKTOKEN, MODULE, TOKEN_URI, copy_cli,  # noqa: E402
                        run)

t = Tap()
VICTIM = 4242  # a uid with no account: the CLI needs none
NOBODY = 65534

# A listener that logs every byte it is sent to LOG and answers ok; run as
# another uid. It binds first, drops to that uid, then listens: the kernel
# takes the listener's credentials at listen().
FAKE = r'''
import json, os, socket, sys
path, log, uid, ready = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o777)
if uid != os.geteuid():
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
s.listen(8)
open(ready, 'w').close()
while True:
    c, _ = s.accept()
    data = b''
    while not data.endswith(b'\n'):
        b = c.recv(65536)
        if not b:
            break
        data += b
    with open(log, 'ab') as f:
        f.write(data)
    if data:
        try:
            rid = json.loads(data)['id']
        except Exception:
            rid = None
        c.sendall(json.dumps({'id': rid, 'ok': True, 'keys': []}).encode() + b'\n')
    c.close()
'''


class Fake:
    def __init__(self, path, uid, work):
        self.log = os.path.join(work, 'fake-%d.log' % uid)
        ready = self.log + '.ready'
        for p in (self.log, ready):
            if os.path.exists(p):
                os.unlink(p)
        open(self.log, 'wb').close()
        os.chmod(self.log, 0o666)
        os.chmod(work, 0o777)  # the ready file, written after the uid drop
        self.proc = subprocess.Popen([sys.executable, '-c', FAKE, path, self.log, str(uid),
                                      ready])
        deadline = time.time() + 10
        while not os.path.exists(ready) and time.time() < deadline and \
                self.proc.poll() is None:
            time.sleep(0.02)
        self.ok = os.path.exists(ready)

    def got(self):
        with open(self.log, 'rb') as f:
            return f.read()

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def as_uid(uid, args, input=None, env=None):
    base = ['setpriv', f'--reuid={uid}', f'--regid={uid}', '--clear-groups']
    e = {'PATH': '/usr/bin:/bin'} if env is None else env
    return subprocess.run(base + args, input=input, env=e, capture_output=True, text=True,
                          timeout=60)


def test_squatted_fallback(cli, work):
    d = f'/tmp/p11jwt-{VICTIM}'
    shutil.rmtree(d, ignore_errors=True)
    os.mkdir(d)
    os.chmod(d, 0o755)
    os.chown(d, NOBODY, NOBODY)
    sock = os.path.join(d, 'agent.sock')
    fake = Fake(sock, NOBODY, work)
    try:
        if not t.ok(fake.ok, 'another uid (nobody) squats /tmp/p11jwt-UID with a listener'):
            return
        # the victim has no XDG_RUNTIME_DIR and no P11JWT_AGENT_SOCK (su, cron)
        r = as_uid(VICTIM, [cli, 'login'], input='123456\n')
        t.ok(r.returncode == 2 and 'insecure' in r.stderr, 'p11jwt login refuses the '
             'squatted fallback directory (exit 2, insecure_file)', r.stdout + r.stderr)
        t.ok(d in r.stderr and 'owned by uid 65534' in r.stderr and 'mode 0755' in r.stderr,
             'the error names the directory, its owner and its mode', r.stderr)
        t.eq(fake.got(), b'', 'the squatter read nothing: no PIN, not even a request')
        r = as_uid(VICTIM, [cli, 'keys'])
        t.ok(r.returncode == 2 and fake.got() == b'', 'p11jwt keys: refused as well, '
             'nothing sent', r.stderr)
        # even at 0700, a directory of another uid is not ours
        os.chmod(d, 0o700)
        r = as_uid(VICTIM, [cli, 'login'], input='123456\n')
        t.ok(r.returncode == 2 and 'owned by uid 65534 (mode 0700)' in r.stderr and
             fake.got() == b'', 'a 0700 directory of another uid is refused too', r.stderr)
        # the victim's own directory, but 0755 in /tmp: anyone could have
        # made it and handed it over, so only 0700 counts there
        os.chown(d, VICTIM, VICTIM)
        os.chmod(d, 0o755)
        r = as_uid(VICTIM, [cli, 'login'], input='123456\n')
        t.ok(r.returncode == 2 and 'must be 0700' in r.stderr and fake.got() == b'',
             'the victim\'s own /tmp/p11jwt-UID at 0755 is refused (0700 only in /tmp)',
             r.stderr)
    finally:
        fake.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_foreign_listener(cli, work):
    # a directory root owns and nobody else may write to (trusted), below a
    # private one, with a listener that runs as nobody
    top = tempfile.mkdtemp(prefix='p11jwt-peer-', dir='/tmp')  # 0700, root's
    os.chmod(top, 0o711)
    d = os.path.join(top, 'run')
    os.mkdir(d, 0o755)
    os.chmod(d, 0o755)
    sock = os.path.join(d, 'agent.sock')
    env = {'PATH': '/usr/bin:/bin', 'P11JWT_AGENT_SOCK': sock}
    fake = Fake(sock, NOBODY, work)
    try:
        if not t.ok(fake.ok, 'a listener of uid nobody in a directory root owns'):
            return
        r = as_uid(VICTIM, [cli, 'login'], input='123456\n', env=env)
        t.ok(r.returncode == 2 and 'served by uid 65534' in r.stderr and sock in r.stderr,
             'p11jwt login refuses a listener of another uid (SO_PEERCRED), naming it',
             r.stderr)
        t.eq(fake.got(), b'', 'that listener read nothing')
        r = as_uid(VICTIM, [cli, '--agent-uid', 'nobody', 'keys'], env=env)
        t.ok(r.returncode == 0 and b'"op":"keys"' in fake.got(),
             '--agent-uid nobody trusts an agent that runs as nobody', r.stderr)
        env2 = dict(env, P11JWT_AGENT_UID=str(NOBODY))
        r = as_uid(VICTIM, [cli, 'keys'], env=env2)
        t.ok(r.returncode == 0, 'P11JWT_AGENT_UID=65534 does the same', r.stderr)
        r = as_uid(VICTIM, [cli, '--agent-uid', 'no-such-user-p11j', 'keys'], env=env)
        t.ok(r.returncode == 2 and 'neither a user name nor a uid' in r.stderr,
             'an unknown --agent-uid is a usage error', r.stderr)
        # the listener's uid is checked, the directory's owner alone is not
        # enough: root's directory, nobody's listener, the victim trusts only
        # itself and root
        r = as_uid(VICTIM, [cli, 'sign', '--key', 'k', '--claim', 'sub=x'], env=env)
        t.ok(r.returncode == 2 and 'served by uid 65534' in r.stderr,
             'p11jwt sign refuses it too', r.stderr)
    finally:
        fake.stop()
        shutil.rmtree(top, ignore_errors=True)


def test_agent_rule(tokdir, work):
    """The agent refuses to listen in a directory the CLI would refuse."""
    def start(sock):
        return run([AGENT, '--foreground', '--module', MODULE, '--token', TOKEN_URI,
                    '--pin-file', os.path.join(tokdir, 'pin'), '--socket', sock,
                    '--audit', 'none'], timeout=30)

    top = tempfile.mkdtemp(prefix='p11jwt-ag-', dir='/tmp')
    try:
        d = os.path.join(top, 'open')
        os.mkdir(d)
        os.chmod(d, 0o770)
        r = start(os.path.join(d, 'agent.sock'))
        t.ok(r.returncode != 0 and 'writable by others (mode 0770)' in r.stderr,
             'the agent refuses a socket directory with group write', r.stderr)
        os.chown(d, NOBODY, NOBODY)
        os.chmod(d, 0o700)
        r = start(os.path.join(d, 'agent.sock'))
        t.ok(r.returncode != 0 and 'owned by uid 65534' in r.stderr,
             'the agent refuses a socket directory of another uid', r.stderr)
        # in /tmp, 0700 exactly
        d2 = tempfile.mkdtemp(prefix='p11jwt-ag2-', dir='/tmp')
        os.chmod(d2, 0o755)
        r = start(os.path.join(d2, 'agent.sock'))
        t.ok(r.returncode != 0 and 'must be 0700' in r.stderr,
             'the agent refuses a 0755 socket directory right in /tmp', r.stderr)
        shutil.rmtree(d2, ignore_errors=True)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def main():
    if os.geteuid() != 0 or not shutil.which('setpriv'):
        for what in ('squatted fallback directory', 'listener of another uid',
                     'the agent\'s own directory rule'):
            t.skip(what, 'needs root and setpriv')
        t.done()
    work = tempfile.mkdtemp(prefix='p11jwt-sq-', dir='/tmp')
    os.chmod(work, 0o711)
    cli = copy_cli(work)  # a copy any uid can run
    try:
        test_squatted_fallback(cli, work)
        test_foreign_listener(cli, work)
        tokdir = os.path.join(BUILD, 'tests', 'sockets-token')
        shutil.rmtree(tokdir, ignore_errors=True)
        r = run([MKTOKEN, tokdir], timeout=180)
        if t.ok(r.returncode == 0, 'mktoken makes a token', r.stdout + r.stderr):
            os.environ['SOFTHSM2_CONF'] = os.path.join(tokdir, 'softhsm2.conf')
            test_agent_rule(tokdir, work)
        shutil.rmtree(tokdir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t.done()


if __name__ == '__main__':
    main()
