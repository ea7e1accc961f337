#!/usr/bin/python3
"""Soak: many clients pipelining requests at one agent, with random
disconnects in the middle of requests and of answers, then a check that the
agent's open file descriptors and resident memory came back to where they
were after a warm-up.

Most requests are cheap (hello, keys, malformed ones); 2 % are real
signatures on the SoftHSM token, with RSA and EC keys. Not Ed25519: SoftHSM
2.6 leaks in C_SignInit with Ed25519 keys (about 70 bytes a signature, see
tests/lsan.supp), which would be measured here as the agent's growth.
The total is P11JWT_SOAK_REQUESTS (default 1,000,000: about 10 s on 2
cores). Memory slack after the warm-up (a tenth of the total):
P11JWT_SOAK_RSS_SLACK_KIB (default 1024). Under ASan the memory check is
skipped (its quarantine holds freed memory) and the default total is
200,000.

Environment (set by tests/integration/meson.build): P11JWT_SRCDIR,
P11JWT_BUILDDIR. Prints TAP.
"""
import json
import os
import random
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
from test_agent import AGENT, BUILD, MKTOKEN, MODULE  # noqa: E402

t = Tap()


def sanitized():
    try:
        with open(os.path.join(BUILD, 'meson-info', 'intro-buildoptions.json')) as f:
            for o in json.load(f):
                if o['name'] == 'b_sanitize':
                    return o['value'] not in ('none', [], '')
    except (OSError, ValueError, KeyError):
        pass
    return False


ASAN = sanitized()
TOTAL = int(os.environ.get('P11JWT_SOAK_REQUESTS') or (200000 if ASAN else 1000000))
RSS_SLACK_KIB = int(os.environ.get('P11JWT_SOAK_RSS_SLACK_KIB') or 1024)
CLIENTS = 8
SIGN_KEYS = ('ec-p256', 'rsa-2048', 'ec-p384', 'ec-p521')


def proc_fds(pid):
    return len(os.listdir(f'/proc/{pid}/fd'))


def proc_rss_kib(pid):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return -1


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.answered = 0
        self.signed = 0
        self.errors = 0
        self.abandoned = 0
        self.bad = []

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def fail(self, msg):
        with self.lock:
            if len(self.bad) < 5:
                self.bad.append(msg)


def one_batch(path, rng, st, budget):
    """One connection: a pipelined batch, read in order; sometimes cut short."""
    n = min(budget, rng.randint(1, 400))
    kinds = []
    out = []
    for i in range(n):
        x = rng.random()
        if x < 0.02:
            kinds.append('sign')
            out.append(b'{"id":%d,"op":"sign","key":"%s","claims":{"iss":"soak","sub":"s%d"}}\n'
                       % (i, rng.choice(SIGN_KEYS).encode(), i))
        elif x < 0.10:
            kinds.append('keys')
            out.append(b'{"id":%d,"op":"keys"}\n' % i)
        elif x < 0.13:
            kinds.append('err')
            out.append(b'{"id":%d,"op":"nope"}\n' % i)
        elif x < 0.15:
            kinds.append('err')
            out.append(b'{"id":%d,"op":"hello",\n' % i)  # not JSON: id is null
        else:
            kinds.append('hello')
            out.append(b'{"id":%d,"op":"hello"}\n' % i)
    mode = rng.random()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    try:
        s.connect(path)
    except OSError as e:
        st.fail(f'connect: {e}')
        return 0
    try:
        data = b''.join(out)
        if mode < 0.04:
            # disconnect in the middle of a request line
            cut = rng.randint(0, len(data) - 1)
            s.sendall(data[:cut])
            st.add(sent=n, abandoned=n)
            return n
        s.sendall(data)
        if mode < 0.08:
            # disconnect without reading the answers (some being signed)
            st.add(sent=n, abandoned=n)
            return n
        stop_after = rng.randint(0, n - 1) if mode < 0.12 else n
        buf = b''
        got = 0
        signed = errors = 0
        while got < stop_after:
            chunk = s.recv(262144)
            if not chunk:
                st.fail(f'EOF after {got} of {n} answers')
                break
            buf += chunk
            while got < stop_after:
                nl = buf.find(b'\n')
                if nl < 0:
                    break
                line = buf[:nl]
                buf = buf[nl + 1:]
                k = kinds[got]
                if k == 'hello':
                    if line != b'{"id":%d,"ok":true,"protocol":1,"version":"%s"}' % (
                            got, VERSION):
                        st.fail(f'hello {got}: {line[:120]!r}')
                elif k == 'keys':
                    if not line.startswith(b'{"id":%d,"ok":true,"keys":[' % got):
                        st.fail(f'keys {got}: {line[:120]!r}')
                elif k == 'sign':
                    r = json.loads(line)
                    if r.get('id') != got or not r.get('ok') or r['jwt'].count('.') != 2:
                        st.fail(f'sign {got}: {line[:200]!r}')
                    signed += 1
                else:
                    if b'"ok":false' not in line:
                        st.fail(f'error {got}: {line[:120]!r}')
                    errors += 1
                got += 1
        st.add(sent=n, answered=got, signed=signed, errors=errors,
               abandoned=n - got)
        return n
    finally:
        s.close()


def client(path, seed, st, quota):
    rng = random.Random(seed)
    left = quota
    while left > 0:
        left -= max(1, one_batch(path, rng, st, left))


def run_phase(path, total, seed):
    st = Stats()
    per = total // CLIENTS
    th = [threading.Thread(target=client, args=(path, seed + i, st,
                                                per + (total % CLIENTS if i == 0 else 0)))
          for i in range(CLIENTS)]
    t0 = time.time()
    for x in th:
        x.start()
    for x in th:
        x.join()
    return st, time.time() - t0


def status(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    s.sendall(b'{"op":"status"}\n')
    f = s.makefile('rb')
    r = json.loads(f.readline())
    s.close()
    return r


def settle(pid, path, timeout=20):
    """Wait until the agent holds no client connection but ours."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if status(path).get('connections') == 1:
            time.sleep(0.3)  # let the status connection itself close
            return True
        time.sleep(0.1)
    return False


VERSION = b''


def main():
    global VERSION
    work = tempfile.mkdtemp(prefix='soak-', dir=os.path.join(BUILD, 'tests'))
    tokdir = os.path.join(work, 'token')
    r = subprocess.run([MKTOKEN, tokdir], capture_output=True, text=True, timeout=180)
    if not t.ok(r.returncode == 0, 'mktoken makes the test token', r.stdout + r.stderr):
        t.done()
    os.environ['SOFTHSM2_CONF'] = os.path.join(tokdir, 'softhsm2.conf')
    VERSION = subprocess.run([AGENT, '--version'], capture_output=True,
                             text=True).stdout.split()[-1].encode()
    sockdir = tempfile.mkdtemp(prefix='p11jwt-soak-', dir='/tmp')
    path = os.path.join(sockdir, 'run', 'agent.sock')
    audit = os.path.join(work, 'audit.log')
    proc = subprocess.Popen([AGENT, '--foreground', '--module', MODULE, '--token',
                             'pkcs11:token=p11jwt-test', '--pin-file',
                             os.path.join(tokdir, 'pin'), '--socket', path,
                             '--audit', 'file:' + audit],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while not os.path.exists(path) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        if not t.ok(proc.poll() is None and os.path.exists(path), 'agent starts'):
            t.done()
        pid = proc.pid
        t.diag(f'soak: {TOTAL} requests, {CLIENTS} clients'
               f'{" (ASan build)" if ASAN else ""}')

        warm = max(2000, TOTAL // 10)
        st, secs = run_phase(path, warm, 1)
        t.ok(not st.bad, f'warm-up: {st.sent} requests answered correctly', st.bad)
        t.ok(settle(pid, path), 'warm-up: every client connection closed by the agent')
        fds0, rss0 = proc_fds(pid), proc_rss_kib(pid)
        s0 = status(path)

        st, secs = run_phase(path, TOTAL - warm, 1000)
        t.diag(f'soak: {st.sent} requests in {secs:.1f} s ({st.sent / secs:.0f}/s): '
               f'{st.answered} answers read, {st.signed} signatures, {st.errors} error '
               f'answers, {st.abandoned} abandoned by disconnects')
        t.ok(not st.bad, 'every answer read is correct and in order', st.bad)
        t.ok(st.signed > 0 and st.abandoned > 0 and st.errors > 0,
             'the mix had signatures, error answers and disconnects',
             (st.signed, st.errors, st.abandoned))
        t.ok(proc.poll() is None, 'the agent is still running')
        t.ok(settle(pid, path), 'every client connection closed by the agent')
        fds1, rss1 = proc_fds(pid), proc_rss_kib(pid)
        s1 = status(path)
        t.diag(f'soak: fds {fds0} -> {fds1}; VmRSS {rss0} -> {rss1} KiB '
               f'({rss1 - rss0:+d} KiB)')
        t.eq(fds1, fds0, 'open file descriptors back to the warm-up baseline')
        if ASAN:
            t.skip(f'VmRSS within {RSS_SLACK_KIB} KiB of the warm-up baseline',
                   'ASan quarantine holds freed memory')
        else:
            t.ok(rss1 - rss0 < RSS_SLACK_KIB,
                 f'VmRSS within {RSS_SLACK_KIB} KiB of the warm-up baseline',
                 f'{rss0} -> {rss1} KiB')
        answered = s1['requests'] - s0['requests']
        t.ok(st.answered <= answered <= st.sent + 2,
             'status: requests counted (answers read <= counted <= sent)',
             (st.answered, answered, st.sent))
        t.ok(s1['errors'].get('unknown_op', 0) > s0['errors'].get('unknown_op', 0) and
             s1['errors'].get('bad_request', 0) > s0['errors'].get('bad_request', 0),
             'status: error answers counted by code', s1['errors'])
        with open(audit) as f:
            n_audit = sum(1 for _ in f)
        t.ok(n_audit >= st.signed, 'every signature read has its audit line',
             (n_audit, st.signed))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        t.eq(proc.returncode, 0, 'agent exits 0 on SIGTERM')
        err = proc.stderr.read()
        t.ok('ERROR' not in err and 'AddressSanitizer' not in err,
             'no sanitizer report', err[-3000:])
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(sockdir, ignore_errors=True)
    t.done()


if __name__ == '__main__':
    main()
