#!/usr/bin/python3
"""The agent's connection limits (issue 15, items 2 and 3), each with a
bounded run of a few seconds:

- a file descriptor limit lower than max_connections: the agent lowers
  max_connections (and says so once), answers the extra clients "busy"
  and does not spin;
- descriptors running out while it serves (the soft limit lowered under a
  running agent, as another fd consumer would): the reserve descriptor
  lets it answer "busy" and close, with the log line rate-limited and the
  CPU idle;
- the idle timeout closes idle connections but not an active one, one
  with a request being signed, or one with answers left unread;
- the per-uid cap refuses one uid's extra connections while other uids
  and root still get in, and the last slots stay for root and the
  agent's own uid when several uids fill the agent.

Environment (set by tests/integration/meson.build): P11JWT_SRCDIR,
P11JWT_BUILDDIR, P11JWT_FAULTMOD. Prints TAP.
"""
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import Tap  # noqa: E402
import test_agent  # noqa: E402

SRC = os.environ.get('P11JWT_SRCDIR') or os.path.abspath(
    os.path.join(os.path.dirname(__file__), '..', '..'))
BUILD = os.environ.get('P11JWT_BUILDDIR') or os.path.join(SRC, 'build')
AGENT = os.path.join(BUILD, 'agent', 'p11jwt-agent')
MKTOKEN = os.path.join(SRC, 'softhsm-conf', 'mktoken')
FAULTMOD = os.environ.get('P11JWT_FAULTMOD') or os.path.join(
    BUILD, 'tests', 'faultmod', 'libp11jfault.so')
MODULE = '/usr/lib/softhsm/libsofthsm2.so'
TOKEN_URI = 'pkcs11:token=p11jwt-test'
TICK = os.sysconf('SC_CLK_TCK')

t = Tap()

# Shared with the helper that runs as another uid (python3 -c): open
# connections, say hello on each, and sort them by what came back within
# the deadline: served (an answer, "forbidden" included: the connection was
# taken), busy:<message>, closed, hung (nothing), or an error.
CLASSIFY = r'''
import json, selectors, socket, time

def open_and_classify(path, n, wait=3.0):
    socks, out = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError as e:
            out.append('connect:' + type(e).__name__)
            s.close()
            continue
        socks.append(s)
    for s in socks:
        try:
            s.sendall(b'{"op":"hello","id":1}\n')
        except OSError:
            pass  # refused already: its busy line is still there to read
        s.setblocking(False)
    sel = selectors.DefaultSelector()
    bufs = {}
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = b''
    res = {}
    deadline = time.monotonic() + wait
    while len(res) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            s = key.fileobj
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                chunk = None
                res[s] = 'error:' + type(e).__name__
            if chunk is not None:
                bufs[s] += chunk
                if b'\n' in bufs[s]:
                    r = json.loads(bufs[s].split(b'\n')[0])
                    err = r.get('error') or {}
                    if r.get('ok') or err.get('code') == 'forbidden':
                        res[s] = 'served'
                    elif err.get('code') == 'busy':
                        res[s] = 'busy:' + err.get('message', '')
                    else:
                        res[s] = 'error:' + str(err.get('code'))
                elif not chunk:
                    res[s] = 'closed'
            if s in res:
                sel.unregister(s)
    sel.close()
    kept = [s for s in socks if res.get(s) == 'served']
    for s in socks:
        if s not in kept:
            s.close()
    return out + [res.get(s, 'hung') for s in socks], kept
'''
exec(CLASSIFY)  # noqa: S102 - our own code, run here and as the other uid

HOG = CLASSIFY + r'''
import sys
res, kept = open_and_classify(sys.argv[1], int(sys.argv[2]))
print(json.dumps(res), flush=True)
sys.stdin.read()  # hold the connections until the test lets go
'''


def run(args, timeout=60, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)


def cpu_s(pid):
    """User + system CPU seconds of the whole process (all threads)."""
    with open(f'/proc/{pid}/stat') as f:
        rest = f.read().rsplit(')', 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def fds(pid):
    return [int(n) for n in os.listdir(f'/proc/{pid}/fd')]


def counts(res):
    c = {}
    for r in res:
        k = r.split(':', 1)[0]
        c[k] = c.get(k, 0) + 1
    return c


class Agent:
    """An agent in --foreground, read until it prints its environment;
    nofile: (soft, hard) RLIMIT_NOFILE to start it with."""

    def __init__(self, tokdir, sock, extra=(), env=None, nofile=None):
        self.sock = sock
        args = [AGENT, '--foreground', '--print-env', '--token', TOKEN_URI, '--socket', sock,
                '--pin-file', os.path.join(tokdir, 'pin'), '--audit', 'none', *extra]
        if '--module' not in extra:
            args += ['--module', MODULE]

        def limits():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, preexec_fn=limits)
        self._err = []
        self._drain = threading.Thread(target=lambda: self._err.extend(self.proc.stderr),
                                       daemon=True)
        self._drain.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line or line.startswith('P11JWT_AGENT_SOCK='):
                break
        self.ready = os.path.exists(sock) and self.proc.poll() is None
        self.pid = self.proc.pid

    def log(self):
        """What the agent wrote to stderr so far."""
        return ''.join(self._err)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain.join(timeout=5)
        return self.proc.returncode


class Conn(test_agent.Conn):
    """test_agent's raw connection, and how long the agent takes to close it."""

    def eof_within(self, limit):
        """Seconds until the agent closed the connection, or None."""
        t0 = time.monotonic()
        self.s.settimeout(limit)
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    return time.monotonic() - t0
                self.buf += chunk
        except socket.timeout:
            return None
        except ConnectionResetError:
            return time.monotonic() - t0


def hello_ok(sock):
    try:
        c = Conn(sock, timeout=3)
        r = c.req({'op': 'hello'})
        c.close()
        return r.get('ok') is True
    except (OSError, EOFError):
        return False


def test_nofile_at_start(tokdir, sockdir):
    """Started with a hard limit of 160 descriptors and the default
    max_connections (1024): today's main accepted until EMFILE and then spun
    on accept() while the rest of 200 clients hung."""
    sock = os.path.join(sockdir, 'nofile', 'agent.sock')
    a = Agent(tokdir, sock, extra=['--workers', '2'], nofile=(160, 160))
    if not t.ok(a.ready, 'agent starts with RLIMIT_NOFILE 160', a.log()):
        a.stop()
        return
    try:
        cpu0, t0 = cpu_s(a.pid), time.monotonic()
        res, kept = open_and_classify(sock, 200)
        time.sleep(1.0)  # held: an agent that spins burns this second too
        cpu = cpu_s(a.pid) - cpu0
        wall = time.monotonic() - t0
        c = counts(res)
        t.ok(c.get('served') == 94 and c.get('busy') == 106,
             'max_connections is lowered to 160 - 66 = 94: 94 of 200 clients served, '
             '106 answered busy', c)
        t.ok(all('too many connections' in r for r in res if r.startswith('busy')),
             '... with the connection cap\'s message', sorted(set(res)))
        t.ok(cpu < 0.5, f'... using {cpu:.2f} s of CPU in {wall:.1f} s (< 0.5)')
        t.ok(hello_ok(sock) is False, 'a client over the lowered cap is refused while full')
        for s in kept:
            s.close()
        time.sleep(0.3)
        t.ok(hello_ok(sock), 'once they leave, a new client is served')
    finally:
        a.stop()
    log = a.log()
    t.eq(log.count('max_connections 1024 lowered to 94'), 1,
         'the clamp is logged once, at start')
    t.ok('RLIMIT_NOFILE' in log and 'LimitNOFILE=' in log,
         '... naming the limit to raise', log[-2000:])
    n = log.count('refused (busy)')
    t.ok(1 <= n <= 3 and 'accept:' not in log,
         f'the refusals are logged {n} time(s) (rate-limited), accept() never fails',
         log[-2000:])

    # a soft limit under the hard one is raised to it
    a = Agent(tokdir, sock, extra=['--workers', '2'], nofile=(160, 4096))
    try:
        soft = resource.prlimit(a.pid, resource.RLIMIT_NOFILE)[0] if a.ready else None
        t.eq(soft, 4096, 'the agent raises its soft descriptor limit to the hard limit')
    finally:
        a.stop()
    t.ok('lowered' not in a.log(), '... and then keeps max_connections 1024', a.log())


def test_emfile_live(tokdir, sockdir):
    """Descriptors run out under a running agent (its soft limit lowered to
    a few more than it holds, as a module leaking fds would): clients get
    busy instead of hanging, the agent does not spin, and it logs the
    failure a bounded number of times."""
    sock = os.path.join(sockdir, 'emfile', 'agent.sock')
    a = Agent(tokdir, sock, extra=['--workers', '2'])
    if not t.ok(a.ready, 'agent starts'):
        a.stop()
        return
    try:
        t.ok(hello_ok(sock), 'it serves a first client')
        time.sleep(0.3)
        held = fds(a.pid)
        # room for about 8 connections: new fds take the lowest free numbers
        limit = len(held) + 8
        room = limit - len([f for f in held if f < limit])
        hard = resource.prlimit(a.pid, resource.RLIMIT_NOFILE)[1]
        resource.prlimit(a.pid, resource.RLIMIT_NOFILE, (limit, hard))
        cpu0, t0 = cpu_s(a.pid), time.monotonic()
        res, kept = open_and_classify(sock, 60)
        time.sleep(2.0)  # held, out of descriptors: no spinning meanwhile
        res2, kept2 = open_and_classify(sock, 20)  # and it still answers
        cpu = cpu_s(a.pid) - cpu0
        wall = time.monotonic() - t0
        c, c2 = counts(res), counts(res2)
        t.ok(1 <= c.get('served', 0) <= room and c.get('served', 0) + c.get('busy', 0) == 60,
             f'fds limited to {limit}: {c.get("served", 0)} of 60 clients served (room for '
             f'{room}), the rest '
             'answered busy, none left hanging', c)
        t.ok(c2.get('busy') == 20, '20 more clients 2 s later: all answered busy', c2)
        t.ok(all('out of file descriptors' in r for r in res + res2 if r.startswith('busy')),
             '... saying the agent is out of file descriptors', sorted(set(res + res2)))
        t.ok(cpu < 0.5, f'the agent used {cpu:.2f} s of CPU in {wall:.1f} s (< 0.5)')
        for s in kept + kept2:
            s.close()
        resource.prlimit(a.pid, resource.RLIMIT_NOFILE, (hard, hard))
        time.sleep(0.5)
        t.ok(hello_ok(sock), 'with descriptors back, a new client is served')
        time.sleep(0.3)
        t.eq(len(fds(a.pid)), len(held), '... and the agent holds as many fds as before')
    finally:
        a.stop()
    log = a.log()
    n = log.count('accept: Too many open files')
    t.ok(1 <= n <= 2, f'"accept: Too many open files" is logged {n} time(s) for 80 refusals',
         log[-2000:])


def write_ctl(path, text):
    with open(path + '.new', 'w') as f:
        f.write(text + '\n')
    os.replace(path + '.new', path)


def test_idle_timeout(tokdir, sockdir, work):
    """idle_timeout = 1 (from the [agent] section): an idle connection is
    closed after about a second; one that keeps asking, one whose request
    is in C_Sign (delayed 2.5 s by the fault module), and one that leaves
    a megabyte of answers unread for 2.5 s are not."""
    sock = os.path.join(sockdir, 'idle', 'agent.sock')
    conf = os.path.join(work, 'idle.conf')
    with open(conf, 'w') as f:
        f.write('[agent]\nidle_timeout = 1\n')
    ctl = os.path.join(work, 'idle-fault.ctl')
    write_ctl(ctl, '')
    env = dict(os.environ, P11JWT_FAULT_CTL=ctl, P11JWT_FAULT_LOG=os.path.join(work, 'idle.log'))
    env.pop('P11JWT_PIN', None)
    a = Agent(tokdir, sock, env=env, extra=['--config', conf, '--module', FAULTMOD,
                                            '--module-allow', os.path.dirname(FAULTMOD)])
    if not t.ok(a.ready, 'agent with idle_timeout = 1 in [agent] starts', a.log()):
        a.stop()
        return
    try:
        warm = Conn(sock)
        t.ok(warm.req({'op': 'sign', 'key': 'ec-p256', 'claims': {'sub': 'w'}}).get('ok'),
             'it signs')
        warm.close()
        idle = Conn(sock)
        active = Conn(sock)
        slow = Conn(sock)
        unread = Conn(sock)
        write_ctl(ctl, 'delay C_Sign 2500ms 1')
        time.sleep(0.1)
        t0 = time.monotonic()
        slow.send(b'{"op":"sign","key":"ec-p256","claims":{"sub":"slow"},"id":"slow"}\n')
        n = 400
        unread.send(b''.join(b'{"op":"keys","id":%d}\n' % k for k in range(n)))
        closed_at = None
        active_ok = True
        while time.monotonic() - t0 < 2.7:
            active_ok = active_ok and active.req({'op': 'hello'}).get('ok') is True
            if closed_at is None and idle.eof_within(0.25) is not None:
                closed_at = time.monotonic() - t0
        t.ok(closed_at is not None and 0.8 <= closed_at <= 2.0,
             f'an idle connection is closed after the idle timeout (at {closed_at})')
        t.ok(active_ok, 'a connection that keeps asking is not')
        r = slow.line()
        el = time.monotonic() - t0
        t.ok(r.get('ok') is True and r.get('id') == 'slow' and el >= 2.4,
             f'a request held {el:.1f} s in C_Sign is answered', r)
        got = []
        try:
            for _ in range(n):
                got.append(unread.line().get('id'))
        except (EOFError, OSError) as e:
            got.append(repr(e))
        t.eq(got, list(range(n)), f'{n} answers left unread for 2.5 s are all delivered')
        t.ok(active.req({'op': 'hello'}).get('ok') and unread.req({'op': 'hello'}).get('ok'),
             '... and both connections stay usable')
        for c in (idle, active, slow, unread):
            c.close()
    finally:
        write_ctl(ctl, '')
        a.stop()


def open_to_all(sock):
    """Let other uids reach the socket: only SO_PEERCRED stands in the way."""
    d = os.path.dirname(sock)
    os.chmod(os.path.dirname(d), 0o711)
    os.chmod(d, 0o711)
    os.chmod(sock, 0o666)


class Hog:
    """n connections held by a process of uid, until stop()."""

    def __init__(self, sock, uid, n):
        self.p = subprocess.Popen(['setpriv', f'--reuid={uid}', f'--regid={uid}',
                                   '--clear-groups', sys.executable, '-c', HOG, sock, str(n)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  cwd='/')
        line = self.p.stdout.readline()
        self.res = json.loads(line) if line else ['helper failed']

    def stop(self):
        self.p.stdin.close()
        self.p.wait(timeout=10)


def test_per_uid(tokdir, sockdir):
    if os.geteuid() != 0 or not shutil.which('setpriv'):
        t.skip('the per-uid connection cap', 'needs root and setpriv')
        return
    sock = os.path.join(sockdir, 'peruid', 'agent.sock')
    a = Agent(tokdir, sock, extra=['--max-connections', '40', '--max-connections-per-uid', '4'])
    if not t.ok(a.ready, 'agent with --max-connections 40 --max-connections-per-uid 4 starts'):
        a.stop()
        return
    hogs = []
    try:
        open_to_all(sock)
        hogs.append(Hog(sock, 65534, 10))
        c = counts(hogs[0].res)
        t.ok(c.get('served') == 4 and c.get('busy') == 6 and
             all('max_connections_per_uid' in r for r in hogs[0].res if r.startswith('busy')),
             'uid 65534 gets 4 connections; its 6 others are answered busy, naming the '
             'per-uid cap', hogs[0].res)
        hogs.append(Hog(sock, 4242, 2))
        t.eq(counts(hogs[1].res), {'served': 2}, 'another uid (4242) still gets in')
        res, kept = open_and_classify(sock, 10)
        t.eq(counts(res), {'served': 10}, 'root (the agent\'s uid here) is not held to the cap')
        for s in kept:
            s.close()
    finally:
        for h in hogs:
            h.stop()
        a.stop()
    log = a.log()
    t.ok(log.count('max_connections_per_uid (4) reached') == 1,
         'the per-uid refusals are logged once (rate-limited)', log[-2000:])

    # Several uids, each within its cap, fill the agent: the last slot
    # (max_connections / 16) is kept for root and the agent's own uid.
    a = Agent(tokdir, sock, extra=['--max-connections', '16'])
    hogs = []
    try:
        open_to_all(sock)
        for uid in (4301, 4302, 4303, 4304):
            hogs.append(Hog(sock, uid, 4))  # 4 = a quarter of 16, the default cap
        got = [counts(h.res).get('served', 0) for h in hogs]
        busy = [r for h in hogs for r in h.res if r.startswith('busy')]
        t.ok(sum(got) == 15 and len(busy) == 1 and 'too many connections' in busy[0],
             f'4 uids x 4 connections on 16 slots: {sum(got)} served, the 16th refused', got)
        t.ok(hello_ok(sock), 'root still gets the slot kept for it')
    finally:
        for h in hogs:
            h.stop()
        a.stop()


def main():
    work = tempfile.mkdtemp(prefix='limits-', dir=os.path.join(BUILD, 'tests'))
    tokdir = os.path.join(work, 'token')
    r = run([MKTOKEN, tokdir], timeout=180)
    if not t.ok(r.returncode == 0, 'mktoken makes the test token', r.stdout + r.stderr):
        t.done()
    os.environ['SOFTHSM2_CONF'] = os.path.join(tokdir, 'softhsm2.conf')
    os.environ.pop('P11JWT_PIN', None)
    sockdir = tempfile.mkdtemp(prefix='p11jwt-lim-', dir='/tmp')
    try:
        for name, fn in (('nofile at start', lambda: test_nofile_at_start(tokdir, sockdir)),
                         ('EMFILE while serving', lambda: test_emfile_live(tokdir, sockdir)),
                         ('idle timeout', lambda: test_idle_timeout(tokdir, sockdir, work)),
                         ('per-uid cap', lambda: test_per_uid(tokdir, sockdir))):
            t.case(name)(fn)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    t.done()


if __name__ == '__main__':
    main()
