#!/usr/bin/python3
"""bench/run.py: tern against Postfix and smtp-sink on loopback (issue 7).

    make bench                              the full matrix, rewrites docs/PERFORMANCE.md
    /usr/bin/python3 bench/run.py --quick   a short run (1 KiB, 1 repetition, few messages)
    /usr/bin/python3 bench/run.py --help    every option

Three servers, each in its own temporary folder, each on its own loopback port:
  tern      build/ternd (or $TERND) on the contract configuration of issue 2: durable queue,
            Maildir delivery, users and aliases files;
  postfix   a private Postfix instance (postfix -c DIR) set up the same way: the same local
            domain and users, delivered to Maildir by virtual(8);
  sink      smtp-sink, the protocol-only ceiling (it stores nothing).
smtp-source is the load: 1 KiB and 100 KiB messages, 1/10/100 parallel sessions, a new
connection per message or many messages per connection.

Per run: accept rate (until smtp-source has its last 250 and exits), end-to-end rate (until
the last message is a file in the Maildir: the newest ctime there, because rename()/link()
into new/ sets it), peak RSS, fsyncs per accepted message (every fsync/fdatasync/syncfs of
the server and its threads/children, recorded by `perf record` on the syscall tracepoints
or, without perf, by `strace --seccomp-bpf`, attributed by thread/process name), and the
number of Maildir files (each run goes to a fresh recipient, so each run has its own new
Maildir; nothing is deleted until the end, see "inode reuse" in docs/PERFORMANCE.md).
A separate run holds many idle connections to ternd and reports its RSS.

Rules this file keeps: loopback only; every loop is bounded in count and in time; only
processes this script started are signalled, by PID (or the process group it created for
smtp-source); Postfix is started and stopped with its own commands on its own
configuration folder and never touches the system instance.
"""
import argparse
import datetime
import errno
import json
import os
import pathlib
import platform
import pwd
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TERND = pathlib.Path(os.environ.get("TERND", ROOT / "build" / "ternd")).absolute()
TERNCTL = pathlib.Path(os.environ.get("TERNCTL", TERND.parent / "ternctl")).absolute()
DOC = ROOT / "docs" / "PERFORMANCE.md"
DOC_BEGIN = "<!-- bench-results:begin (written by bench/run.py) -->"
DOC_END = "<!-- bench-results:end -->"

LOOPBACK = "127.0.0.1"
DOMAIN = "example.test"
SENDER = "bench@client.example.org"
HELO = "client.example.org"
KIB = 1024
MIB = 1024 * 1024

SERVERS = ("tern", "postfix", "sink")
MODES = ("new", "keep")  # a new connection per message / many messages per connection
MODE_TEXT = {"new": "new conn/msg", "keep": "kept conn"}

# Messages per run when --messages is not given: enough that a run lasts seconds at the
# rates this 2-core machine reaches (Postfix ≈ 0.3–1k msg/s, smtp-sink ≈ 6–18k msg/s).
DEFAULT_COUNTS = {(1024, 1): 2000, (1024, 10): 10000, (1024, 100): 10000,
                  (102400, 1): 1000, (102400, 10): 3000, (102400, 100): 3000}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# /proc helpers

def proc_table():
    """{pid: (ppid, comm)} of every process (threads excluded)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        # comm is in parentheses and may contain spaces: split after the last ')'
        lp, rp = data.find(b"("), data.rfind(b")")
        fields = data[rp + 2:].split()
        out[int(name)] = (int(fields[1]), data[lp + 1:rp].decode(errors="replace"))
    return out


def descendants(root, table=None):
    """root and every process below it."""
    table = table or proc_table()
    children = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [root]
    while stack and len(out) < 100000:  # bounded even if /proc were inconsistent
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def proc_status_kib(pid, key):
    """A "VmRSS"/"VmHWM" line of /proc/PID/status in KiB, 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pids):
    """CPU seconds (user + system) used so far by these processes, all their threads, and
    the children they have already reaped (Postfix's master reaps its services, so a tree
    keeps their time after they exit)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


def machine_busy_s():
    """CPU seconds the whole machine has spent not idle (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK


def wait_quiet(limit_s, busy_max=0.25):
    """Wait (at most limit_s) until the machine is mostly idle: other people's builds and
    tests on these 2 cores would otherwise be measured too. Returns the busy fraction seen
    last."""
    deadline = time.monotonic() + limit_s
    ncpu = os.cpu_count() or 1
    while True:
        b0, t0 = machine_busy_s(), time.monotonic()
        time.sleep(1.0)
        busy = (machine_busy_s() - b0) / ((time.monotonic() - t0) * ncpu)
        if busy <= busy_max or time.monotonic() >= deadline:
            return busy
        time.sleep(min(4.0, max(0.0, deadline - time.monotonic())))


def proc_pss_kib(pid):
    """Proportional set size: shared pages divided among the processes sharing them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class RssSampler:
    """Samples the summed VmRSS of a server's processes in a thread; keeps the peak.
    A multi-process server (Postfix) is the sum over its process tree, which counts shared
    library pages once per process: an upper bound of what it really uses; so the summed
    PSS (shared pages split among their users) is sampled too, every 5th sample because
    smaps_rollup walks the page tables."""

    def __init__(self, pids_fn, interval):
        self.pids_fn, self.interval = pids_fn, interval
        self.peak_kib = 0
        self.peak_pss_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        # bounded by the stop event and by a hard cap on samples (one day at 10 Hz)
        while not self._stop.is_set() and self.samples < 864000:
            pids = self.pids_fn()
            total = sum(proc_status_kib(p, "VmRSS") for p in pids)
            self.peak_kib = max(self.peak_kib, total)
            if self.samples % 5 == 0:
                self.peak_pss_kib = max(self.peak_pss_kib, sum(proc_pss_kib(p) for p in pids))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


# ---------------------------------------------------------------------------------------
# fsync counting

FSYNC_CALLS = ("fsync", "fdatasync", "syncfs", "sync_file_range", "msync")


class FsyncTracer:
    """Records every fsync-family syscall of a server and all its threads and children
    with its CLOCK_MONOTONIC time and thread/process name, so each run's window can be
    counted afterwards and split by who synced (queue vs Maildir delivery).

    perf: `perf record -c 1` on the syscalls:sys_enter_* tracepoints, wrapped around the
    server's start command so that every later fork/thread inherits the counters (attaching
    with -p would miss Postfix's new children). Cost: one ring-buffer record per fsync.
    strace: `strace -f --seccomp-bpf -e trace=...` (only the traced syscalls stop), the
    fallback when perf tracepoints are not usable."""

    def __init__(self, kind, perf_events=()):
        self.kind = kind  # "perf", "strace" or None
        self.perf_events = perf_events

    @staticmethod
    def detect(want="auto"):
        """The first usable of perf and strace (or the one asked for)."""
        if want in ("auto", "perf") and shutil.which("perf"):
            # each tracepoint on its own: a kernel may lack some (msync, sync_file_range)
            events = []
            for call in FSYNC_CALLS:
                r = subprocess.run(["perf", "stat", "-x,", "-e", f"syscalls:sys_enter_{call}",
                                    "true"], capture_output=True, text=True, timeout=30)
                if r.returncode == 0 and "not supported" not in r.stderr \
                        and "<not counted>" not in r.stderr:
                    events.append(f"syscalls:sys_enter_{call}")
            if "syscalls:sys_enter_fsync" in events and "syscalls:sys_enter_fdatasync" in events:
                return FsyncTracer("perf", events)
        if want in ("auto", "strace") and shutil.which("strace"):
            return FsyncTracer("strace")
        return FsyncTracer(None)

    def describe(self):
        if self.kind == "perf":
            calls = ", ".join(e.split("_enter_")[1] for e in self.perf_events)
            return f"`perf record -c 1` on the syscall tracepoints of {calls}"
        if self.kind == "strace":
            return f"`strace -f --seccomp-bpf -e trace={','.join(FSYNC_CALLS)}`"
        return "nothing (neither perf nor strace usable, or --fsync-tracer none)"

    def wrap(self, cmd, out):
        if self.kind == "perf":
            events = [a for e in self.perf_events for a in ("-e", e)]
            return ["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-c", "1", "-m", "1024",
                    *events, "-o", str(out), "--", *cmd]
        if self.kind == "strace":
            return ["strace", "-f", "--seccomp-bpf", "-qq", "-Y", "-ttt", "-e",
                    "trace=" + ",".join(FSYNC_CALLS), "-e", "signal=none", "-o", str(out),
                    "--", *cmd]
        return cmd

    def events(self, out):
        """[(monotonic seconds, comm, syscall)] from a finished recording."""
        if self.kind is None or not pathlib.Path(out).exists():
            return []
        ev = []
        if self.kind == "perf":
            r = subprocess.run(["perf", "script", "-i", str(out), "-F", "comm,time,event"],
                               capture_output=True, text=True, timeout=600)
            pat = re.compile(r"^\s*(.*?)\s+(\d+\.\d+):\s+syscalls:sys_enter_(\w+):")
            for line in r.stdout.splitlines():
                m = pat.match(line)
                if m:
                    ev.append((float(m.group(2)), m.group(1), m.group(3), None))
            return ev
        # strace -ttt prints wall-clock times: shift them onto the monotonic clock
        shift = time.time() - time.monotonic()
        # strace -Y names a thread by its name when strace first saw it, before ternd's
        # pthread_setname_np(): the caller maps thread ids to names it read from /proc
        pat = re.compile(r"^(\d+)<([^>]*)>\s+(\d+\.\d+)\s+(\w+)\(")
        with open(out, errors="replace") as f:
            for line in f:
                m = pat.match(line)
                if m and m.group(4) in FSYNC_CALLS:
                    ev.append((float(m.group(3)) - shift, m.group(2), m.group(4),
                               int(m.group(1))))
        return ev


# ---------------------------------------------------------------------------------------
# servers

def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
            return True
        except OSError:
            return False


def pick_port(preferred, taken):
    """The preferred port if free, else one from 20000-32000 (below the ephemeral range,
    so the load generator's own source ports never collide with a listener)."""
    if preferred not in taken and port_free(preferred):
        taken.add(preferred)
        return preferred
    for port in range(20000 + preferred % 1000, 32000, 7):
        if port not in taken and port_free(port):
            taken.add(port)
            return port
    raise RuntimeError("no free loopback port")


def greets(port, timeout=2.0):
    """True if a server on the port sends a 220 greeting."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            s.settimeout(timeout)
            data = s.recv(512)
            s.sendall(b"QUIT\r\n")
            return data.startswith(b"220")
    except OSError:
        return False


def wait_until(pred, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def run_cmd(cmd, timeout=60, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def spread_dir(path):
    """Mark a folder as a "top directory" (chattr +T) so ext4's Orlov allocator puts each
    of its subfolders in a fresh block group with free inodes.

    Why: this file system is ext4 without a journal, where creating a file skips every
    inode freed in the last 1-6 minutes (recently_deleted() in the inode allocator). A block
    group where tests keep creating and deleting files (the one of /tmp) then creates
    files ~30x slower (measured: 1.5k vs 51k creates/s), and a server would be measured on
    whatever the rest of the machine deleted lately. With +T on the bench folder, on each
    server's folder and on each server's domain mail folder, every server's queue and every
    run's Maildir start in groups of their own; a server still pays for its own deletions
    (Postfix removes a queue file per message), which is part of its design."""
    r = subprocess.run(["chattr", "+T", str(path)], capture_output=True, text=True)
    return r.returncode == 0


def create_rate(folder, n=2000):
    """Files created (and closed, no fsync) per second in a new folder: a probe of the
    inode allocator's state, reported with the results. The files are left in place until
    the whole bench folder goes: deleting them now would leave a group full of recently
    freed inodes, exactly what the allocator prefers for the next spread folder."""
    folder.mkdir()
    t0 = time.monotonic()
    for i in range(n):
        os.close(os.open(folder / str(i), os.O_CREAT | os.O_WRONLY, 0o600))
    return n / (time.monotonic() - t0)


# Removing a bench folder frees tens of thousands of inodes in the groups the next bench's
# spread folders would pick first (fewest directories, most free inodes); ext4 skips them
# for 1-6 minutes. So the end of a bench leaves a mark, and the next one waits that out.
CLEANUP_MARK = pathlib.Path(tempfile.gettempdir()) / "tern-bench.cleanup"
RECENTLY_DELETED_S = 360  # ext4: RECENTCY_MIN 60 s + RECENTCY_DIRTY 300 s


def settle_after_cleanup(limit_s):
    try:
        age = time.time() - CLEANUP_MARK.stat().st_mtime
    except FileNotFoundError:
        return 0.0
    wait = min(limit_s, RECENTLY_DELETED_S - age)
    if wait > 0:
        log(f"a bench folder was removed {age:.0f} s ago: waiting {wait:.0f} s for ext4 to "
            f"reuse its inodes again (--settle)")
        time.sleep(wait)
    return max(0.0, wait)


class Server:
    """What the load runner needs from a server. One instance lives for the whole bench;
    its process is started for each cell of the matrix (so peak RSS is per cell) and its
    folder, Maildirs included, is kept until the end."""
    name = "?"
    stores = True
    queue_comms = ()    # thread/process names whose fsyncs are queue commits
    maildir_comms = ()  # ... whose fsyncs are Maildir deliveries

    def __init__(self, base, tracer):
        self.dir = pathlib.Path(base) / self.name
        self.dir.mkdir(parents=True)
        spread_dir(self.dir)
        self.tracer = tracer
        self.proc = None
        self.rcpt_seq = 0
        self.trace_files = []  # (file, [runs]) per process lifetime
        self.cur_runs = None
        self.task_names = {}  # thread id -> name, read from /proc while the server runs

    def snapshot_task_names(self):
        for pid in self.pids():
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/comm") as f:
                        self.task_names[int(tid)] = f.read().strip()
            except OSError:
                pass

    def start_traced(self, cmd, logname, **kw):
        trace = self.dir / f"fsync-{len(self.trace_files)}.data"
        self.cur_runs = []
        self.trace_files.append((trace, self.cur_runs))
        self.logfh = open(self.dir / logname, "ab")
        self.proc = subprocess.Popen(self.tracer.wrap(cmd, trace), stdout=self.logfh,
                                     stderr=subprocess.STDOUT, **kw)

    def note_run(self, run):
        """Remember a run for fsync attribution after this process ends."""
        if self.cur_runs is not None:
            self.cur_runs.append(run)

    def wait_proc(self, timeout):
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def new_recipient(self):
        self.rcpt_seq += 1
        return f"r{self.rcpt_seq:05d}"

    def maildir(self, user):
        return None

    def counters(self):
        return {}

    def pids(self):
        return []

    def hwm_kib(self):
        """Peak RSS of a single-process server since it started (None if not exact)."""
        return None

    def version(self):
        return "?"

    def attribute_fsyncs(self):
        """After the process ended: count each run's fsyncs, from its start to the next run
        of this server (or the end of the process), by kind."""
        for trace, runs in self.trace_files:
            if not runs:
                continue
            events = sorted(self.tracer.events(trace))
            ends = [r["t_start"] for r in runs[1:]] + [float("inf")]
            for run, end in zip(runs, ends):
                q = m = other = 0
                for t, comm, _, tid in events:
                    if run["t_start"] <= t < end:
                        comm = self.task_names.get(tid, comm)
                        if comm.startswith(self.queue_comms):
                            q += 1
                        elif comm.startswith(self.maildir_comms):
                            m += 1
                        else:
                            other += 1
                run["fsync"] = {"queue": q, "maildir": m, "other": other,
                                "total": q + m + other} if self.tracer.kind else None
        self.trace_files = []


USERS_PER_SERVER = 3000  # fresh recipients available: more than any matrix needs


class TernServer(Server):
    name = "tern"
    queue_comms = ("queue-commit",)
    maildir_comms = ("deliver/",)

    def __init__(self, base, tracer, ports, extra_conf):
        super().__init__(base, tracer)
        self.port = pick_port(2525, ports)
        self.sub_port = pick_port(5870, ports)
        self.extra_conf = extra_conf
        self.conf = self.dir / "ternd.conf"
        self.pid = None
        users = "".join(f"r{i:05d}\n" for i in range(1, USERS_PER_SERVER + 1)) + "postmaster\n"
        (self.dir / "users").write_text(users)
        (self.dir / "aliases").write_text("team: r00001, r00002\n")
        extra = "".join(line + "\n" for line in extra_conf)
        # The contract configuration of issue 2 as written; only the ports may differ (when
        # 2525/5870 are busy) and --tern-conf adds top-level keys (reported with results).
        self.conf.write_text(f"""hostname = mx.example.test
spool = spool
{extra}
[listen mx]
address = {LOOPBACK}:{self.port}
role = mx

[listen submission]
address = {LOOPBACK}:{self.sub_port}
role = submission

[domain example.test]
mailboxes = mail/%d/%u
users = users
aliases = aliases
""")
        # ternd drops to the user "tern" when started as root: it must read its folder
        os.chmod(self.dir, 0o755)
        os.chmod(self.dir.parent, 0o755)
        # the folders ternd would create itself, made beforehand only to mark the domain's
        # folder with spread_dir() (each recipient's Maildir in a fresh inode group)
        try:
            pw = pwd.getpwnam("tern") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
            dom = self.dir / "mail" / DOMAIN
            dom.mkdir(parents=True)
            os.chmod(self.dir / "mail", 0o750)
            os.chmod(dom, 0o700)
            for p in (self.dir / "mail", dom):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            spread_dir(dom)
        except KeyError:
            pass  # no user "tern": let ternd make its folders

    def check(self):
        r = run_cmd([str(TERND), "-n", "-c", str(self.conf)], timeout=30)
        if r.returncode != 0:
            raise RuntimeError("ternd -n rejects the contract configuration:\n"
                               f"{r.stdout}{r.stderr}")

    def start(self, timeout=30):
        self.start_traced([str(TERND), "-F", "-c", str(self.conf)], "ternd.log")
        logf = self.dir / "ternd.log"
        mark = logf.stat().st_size if logf.exists() else 0

        def started():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ternd exited with {self.proc.returncode}: "
                                   f"{self.log_tail(mark)}")
            # ready when it greets; its PID comes from ternctl (the "event=start" log line
            # is at level info, which --tern-conf may have turned off)
            if not greets(self.port):
                return False
            self.pid = self.counters().get("pid") or self.find_ternd_pid()
            return bool(self.pid)

        if not wait_until(started, timeout):
            self.stop()
            raise RuntimeError(f"ternd did not start in {timeout}s: {self.log_tail(mark)}")

    def log_tail(self, mark=0, n=3000):
        try:
            return (self.dir / "ternd.log").read_bytes()[mark:].decode(errors="replace")[-n:]
        except OSError:
            return ""

    def find_ternd_pid(self):
        """The process named ternd below the tracer we started."""
        if self.proc is None:
            return None
        table = proc_table()
        for pid in descendants(self.proc.pid, table):
            if table.get(pid, (0, ""))[1] == "ternd":
                return pid
        return None

    def stop(self, timeout=60):
        if self.proc is None:
            return
        self.pid = self.pid or self.find_ternd_pid()
        if self.proc.poll() is None and self.pid:
            try:
                os.kill(self.pid, signal.SIGTERM)  # ternd itself, a process we started
            except ProcessLookupError:
                pass
        if not self.wait_proc(timeout):
            log(f"tern: ternd {self.pid} did not stop on SIGTERM in {timeout}s; SIGKILL")
            for pid in (self.pid, self.proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, TypeError):
                    pass
            self.wait_proc(30)
        self.proc = None
        self.pid = None
        self.logfh.close()
        self.attribute_fsyncs()

    def maildir(self, user):
        return self.dir / "mail" / DOMAIN / user

    def counters(self):
        """ternd's own counters (ternctl -j stats): committed messages, queue fsyncs."""
        try:
            r = run_cmd([str(TERNCTL), "-c", str(self.conf), "-j", "stats"], timeout=30)
            st = json.loads(r.stdout).get("stats", {})
            return {k: int(v) for k, v in st.items() if str(v).isdigit()}
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return {}

    def pids(self):
        return [self.pid] if self.pid else []

    def hwm_kib(self):
        return proc_status_kib(self.pid, "VmHWM") if self.pid else None

    def version(self):
        rev = run_cmd(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = run_cmd(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no",
                         "src"]).stdout.strip()
        ver = "?"
        m = re.search(rb'TERN_VERSION "([^"]+)"', (ROOT / "src/cmd/ternd.c").read_bytes()) \
            if (ROOT / "src/cmd/ternd.c").exists() else None
        if m:
            ver = m.group(1).decode()
        return f"tern {ver} (git {rev}{'+changes' if dirty else ''})"


POSTFIX_MASTER_CF = """\
# A private instance for the benchmark: smtpd on one loopback port, no chroot.
{listen} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
local      unix  - n n -  - local
virtual    unix  - n n -  - virtual
lmtp       unix  - - n -  - lmtp
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


class PostfixServer(Server):
    name = "postfix"
    queue_comms = ("cleanup",)
    maildir_comms = ("virtual",)

    def __init__(self, base, tracer, ports):
        super().__init__(base, tracer)
        self.port = pick_port(2526, ports)
        d = self.dir
        self.etc = d / "etc"
        for sub in ("etc", "queue", "data", "mail"):
            (d / sub).mkdir()
        os.chmod(d, 0o755)
        os.chmod(d.parent, 0o755)
        # Maildirs belong to the same unprivileged user ternd delivers as
        try:
            pw = pwd.getpwnam("tern")
        except KeyError:
            pw = pwd.getpwnam("nobody")
        pf = pwd.getpwnam("postfix")
        os.chown(d / "mail", pw.pw_uid, pw.pw_gid)
        os.chown(d / "data", pf.pw_uid, pf.pw_gid)
        (d / "mail" / DOMAIN).mkdir()
        os.chown(d / "mail" / DOMAIN, pw.pw_uid, pw.pw_gid)
        spread_dir(d / "mail" / DOMAIN)  # as for tern: each Maildir in a fresh inode group
        users = "".join(f"r{i:05d}@{DOMAIN} {DOMAIN}/r{i:05d}/\n"
                        for i in range(1, USERS_PER_SERVER + 1))
        (self.etc / "vmailbox").write_text(users)
        # Equivalent to tern's contract configuration: one local domain, its users delivered
        # to Maildir (trailing /) by virtual(8); no DNS lookups; loopback only; connection
        # limits lifted for the load; everything else Postfix's defaults (in particular
        # in_flow_delay = 1s and the default virtual delivery concurrency of 20).
        (self.etc / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.example.test
mydomain = {DOMAIN}
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = {LOOPBACK}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {d}/mail
virtual_mailbox_maps = texthash:{self.etc}/vmailbox
virtual_uid_maps = static:{pw.pw_uid}
virtual_gid_maps = static:{pw.pw_gid}
virtual_minimum_uid = 1
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtpd_client_event_limit_exceptions = 127.0.0.0/8
smtpd_client_connection_count_limit = 1000
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
default_process_limit = 300
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
biff = no
""")
        (self.etc / "master.cf").write_text(POSTFIX_MASTER_CF.format(
            listen=f"{LOOPBACK}:{self.port}"))
        r = run_cmd(["postfix", "-c", str(self.etc), "check"], timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"postfix check failed:\n{r.stdout}{r.stderr}")

    def check(self):
        pass

    def master_pid(self):
        try:
            return int((self.dir / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self, timeout=60):
        # start-fg keeps master in the foreground (as a child of postfix-script), so the
        # fsync tracer wrapped around it sees every process master forks.
        self.start_traced(["postfix", "-c", str(self.etc), "start-fg"], "start-fg.log")

        def started():
            if self.proc.poll() is not None:
                raise RuntimeError(f"postfix start-fg exited with {self.proc.returncode}: "
                                   f"{self.maillog_tail()}")
            return self.master_pid() is not None and greets(self.port)

        if not wait_until(started, timeout, 0.1):
            self.stop()
            raise RuntimeError(f"Postfix did not start in {timeout}s: {self.maillog_tail()}")

    def maillog_tail(self, n=3000):
        try:
            return (self.dir / "maillog").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout=60):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            run_cmd(["postfix", "-c", str(self.etc), "stop"], timeout=60)
        if not self.wait_proc(timeout):
            log("postfix: did not stop in time; postfix abort")
            run_cmd(["postfix", "-c", str(self.etc), "abort"], timeout=60)
            if not self.wait_proc(30):
                pid = self.master_pid()
                if pid:
                    os.kill(pid, signal.SIGKILL)  # the master this script started
                self.wait_proc(30)
        self.proc = None
        self.logfh.close()
        self.attribute_fsyncs()

    def maildir(self, user):
        return self.dir / "mail" / DOMAIN / user

    def pids(self):
        pid = self.master_pid()
        return descendants(pid) if pid else []

    def version(self):
        r = run_cmd(["postconf", "-d", "-h", "mail_version"])
        return f"Postfix {r.stdout.strip()}"


class SinkServer(Server):
    name = "sink"
    stores = False

    def __init__(self, base, tracer, ports):
        super().__init__(base, FsyncTracer(None))  # it never syncs: nothing to trace
        self.port = pick_port(2527, ports)

    def check(self):
        pass

    def start(self, timeout=30):
        # pipelining is announced by default (fair: ternd announces it too); -m lifts the
        # default 256 simultaneous connections; -u is required when started as root.
        cmd = ["smtp-sink", "-h", "mx.example.test", "-m", "2000"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]
        cmd += [f"{LOOPBACK}:{self.port}", "1024"]
        self.start_traced(cmd, "smtp-sink.log")
        if not wait_until(lambda: self.proc.poll() is None and greets(self.port), timeout):
            self.stop()
            raise RuntimeError("smtp-sink did not start")

    def stop(self, timeout=30):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # our child, by PID
        if not self.wait_proc(timeout):
            self.proc.kill()
            self.wait_proc(10)
        self.proc = None
        self.logfh.close()
        self.trace_files = []

    def pids(self):
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def hwm_kib(self):
        return proc_status_kib(self.proc.pid, "VmHWM") if self.proc else None

    def version(self):
        version = run_cmd(["postconf", "-d", "-h", "mail_version"]).stdout.strip()
        return f"smtp-sink (Postfix {version})"


# ---------------------------------------------------------------------------------------
# one load run

def count_files(md):
    """Messages in a Maildir (new/ + cur/), the files left in tmp/, and the newest ctime
    among the messages (the moment the last one was renamed/linked into new/)."""
    n, newest = 0, 0.0
    for sub in ("new", "cur"):
        try:
            with os.scandir(md / sub) as it:
                for e in it:
                    n += 1
                    newest = max(newest, e.stat(follow_symlinks=False).st_ctime)
        except FileNotFoundError:
            pass
    try:
        tmp = len(os.listdir(md / "tmp"))
    except FileNotFoundError:
        tmp = 0
    return n, tmp, newest


def count_quick(md):
    """Number of messages in new/ + cur/ (no stat: cheap enough to poll)."""
    n = 0
    for sub in ("new", "cur"):
        try:
            with os.scandir(md / sub) as it:
                n += sum(1 for _ in it)
        except FileNotFoundError:
            pass
    return n


def run_load(server, size, sessions, mode, count, timeout, rss_interval):
    """One smtp-source run against one server; returns a dict of measurements.
    Bounded: smtp-source is killed (its own process group) after `timeout` seconds, and
    the wait for delivery gives up `timeout` seconds after the last 250."""
    user = server.new_recipient()
    md = server.maildir(user)
    cmd = ["smtp-source", "-s", str(sessions), "-m", str(count), "-l", str(size),
           "-M", HELO, "-f", SENDER, "-t", f"{user}@{DOMAIN}"]
    if mode == "keep":
        cmd.insert(1, "-d")
    cmd.append(f"{LOOPBACK}:{server.port}")
    run = {"server": server.name, "size": size, "sessions": sessions, "mode": mode,
           "messages": count, "rcpt": user, "ok": True, "error": None}
    before = server.counters()
    cpu0 = tree_cpu_s(server.pids())
    gen0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, self0 = machine_busy_s(), time.process_time()
    run["t_start"] = time.monotonic()
    server.note_run(run)
    with RssSampler(server.pids, rss_interval) as rss:
        t0w, t0 = time.time(), time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the group we created for smtp-source
            out, err = p.communicate(timeout=30)
            run.update(ok=False, error=f"smtp-source still running after {timeout}s: killed")
        t1 = time.monotonic()
        run["accept_s"] = t1 - t0
        if run["ok"] and p.returncode != 0:
            run.update(ok=False, error=f"smtp-source exit {p.returncode}: "
                                        f"{err.decode(errors='replace').strip()[-300:]}")
        # end to end: poll until every message is a file, then wait a little longer to see
        # a late duplicate; the time is the newest ctime, not the moment we noticed
        if md is not None:
            deadline = t1 + timeout
            while time.monotonic() < deadline and count_quick(md) < count:
                time.sleep(0.02)
            time.sleep(1.0)
            n, tmp, newest = count_files(md)
            run["files"], run["tmp_files"] = n, tmp
            if n == count:
                run["e2e_s"] = max(newest - t0w, run["accept_s"])
            elif run["ok"]:
                run.update(ok=False, error=f"{n} Maildir files, expected {count}"
                                           f" ({'duplicates' if n > count else 'missing'})")
    run["cpu_s"] = tree_cpu_s(server.pids()) - cpu0
    server.snapshot_task_names()
    gen1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # the load generator's CPU (smtp-source, our only child in this window): it shares the
    # 2 cores with the server
    run["gen_cpu_s"] = gen1.ru_utime + gen1.ru_stime - gen0.ru_utime - gen0.ru_stime
    # what else used the CPU meanwhile: other people's work, kernel threads (disk and
    # network completions partly belong to the run), and this script's own polling
    wall = time.monotonic() - t0
    other = machine_busy_s() - busy0 - run["cpu_s"] - run["gen_cpu_s"] \
        - (time.process_time() - self0)
    run["other_cpu_pct"] = max(0.0, 100 * other / (wall * (os.cpu_count() or 1)))
    run["rss_peak_kib"] = rss.peak_kib
    run["pss_peak_kib"] = rss.peak_pss_kib
    run["hwm_kib"] = server.hwm_kib()
    after = server.counters()
    if before and after:
        run["counters"] = {k: after[k] - before.get(k, 0) for k in after
                           if k in ("committed", "fsyncs", "commit_batches", "delivered",
                                    "smtp_messages", "connections_accepted",
                                    "connections_refused")}
    run["accept_rate"] = count / run["accept_s"] if run["ok"] else None
    run["e2e_rate"] = count / run["e2e_s"] if run.get("e2e_s") and run["ok"] else None
    run["latency_ms"] = 1000 * run["accept_s"] / count if run["ok"] else None
    return run


# ---------------------------------------------------------------------------------------
# 10,000 idle connections

def idle_test(tern, n, timeout):
    """Open n connections to ternd's mx port, read each greeting, hold them all, read
    ternd's RSS, close them. Source addresses are spread over 127.0.0.1-8 so the 4-tuples
    never run short, whatever TIME_WAIT the load runs left behind."""
    res = {"connections": n, "held": 0, "failed": 0, "ok": False}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        except (ValueError, OSError):
            pass
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < want:
        res["error"] = f"RLIMIT_NOFILE {soft} < {want} (hard {hard})"
        return res
    tern.start()
    try:
        time.sleep(0.5)
        res["rss_before_kib"] = proc_status_kib(tern.pid, "VmRSS")
        sel = selectors.DefaultSelector()
        held, pending = [], {}
        started = 0
        t0 = time.monotonic()
        deadline = t0 + timeout
        ip_bind_no_port = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
        while (len(held) + res["failed"] < n) and time.monotonic() < deadline:
            # at most 256 handshakes in flight: never more than the listen backlog absorbs
            while len(pending) < 256 and started < n:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_IP, ip_bind_no_port, 1)
                s.bind((f"127.0.0.{1 + started % 8}", 0))
                rc = s.connect_ex((LOOPBACK, tern.port))
                started += 1
                if rc not in (0, errno.EINPROGRESS):
                    res["failed"] += 1
                    s.close()
                    continue
                pending[s] = b""
                sel.register(s, selectors.EVENT_READ)
            for key, _ in sel.select(0.5):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    res["failed"] += 1
                    sel.unregister(s)
                    del pending[s]
                    s.close()
                    continue
                pending[s] += data
                if b"\r\n" in pending[s]:
                    sel.unregister(s)
                    if pending.pop(s).startswith(b"220"):
                        held.append(s)
                    else:
                        res["failed"] += 1
                        s.close()
        res["connect_s"] = time.monotonic() - t0
        res["held"] = len(held)
        time.sleep(2.0)  # let ternd settle: sessions allocated, timers armed
        res["rss_held_kib"] = proc_status_kib(tern.pid, "VmRSS")
        res["hwm_kib"] = proc_status_kib(tern.pid, "VmHWM")
        res["sessions_reported"] = tern.counters().get("sessions")
        for s in list(pending) + held:
            s.close()
        sel.close()
        time.sleep(2.0)
        res["rss_after_kib"] = proc_status_kib(tern.pid, "VmRSS")
        res["alive"] = tern.proc.poll() is None
        res["ok"] = res["held"] == n and res["alive"]
        if not res["ok"]:
            res["error"] = f"held {res['held']} of {n}, {res['failed']} failed" + \
                ("" if res["alive"] else "; ternd died")
    finally:
        tern.stop()
    return res


# ---------------------------------------------------------------------------------------
# the matrix

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def run_matrix(args, servers):
    """For each cell (size × sessions × mode): start every server, run the repetitions
    with the servers interleaved (rotated order per repetition, so slow drift of the machine
    hits all of them alike), stop them. Returns every run."""
    runs = []
    cells = [(size, sess, mode) for size in args.sizes for sess in args.sessions
             for mode in args.modes]
    for ci, (size, sess, mode) in enumerate(cells):
        count = args.messages or DEFAULT_COUNTS.get((size, sess), 2000)
        log(f"cell {ci + 1}/{len(cells)}: {size // KIB} KiB, {sess} sessions, "
            f"{MODE_TEXT[mode]}, {count} messages × {args.reps}")
        if args.wait_quiet:
            busy = wait_quiet(args.wait_quiet)
            if busy > 0.25:
                log(f"  the machine is {100 * busy:.0f}% busy before this cell (others' work)")
        live = []
        try:
            for s in servers:
                try:
                    s.start()
                    live.append(s)
                except RuntimeError as e:
                    log(f"  {s.name}: cannot start: {e}")
                    runs.append({"server": s.name, "size": size, "sessions": sess, "mode": mode,
                                 "messages": count, "ok": False, "error": f"start: {e}"[:500]})
            for rep in range(args.reps):
                order = live[rep % len(live):] + live[:rep % len(live)] if live else []
                for s in order:
                    if s.proc is None or s.proc.poll() is not None:
                        runs.append({"server": s.name, "size": size, "sessions": sess,
                                     "mode": mode, "messages": count, "ok": False,
                                     "error": "server not running"})
                        continue
                    r = run_load(s, size, sess, mode, count, args.timeout, args.rss_interval)
                    r["rep"] = rep
                    runs.append(r)
                    e2e = f", e2e {r['e2e_rate']:.0f}/s" if r.get("e2e_rate") else ""
                    log(f"  {s.name:8} rep {rep + 1}: " + (
                        f"accept {r['accept_rate']:.0f}/s{e2e}, "
                        f"RSS {r['rss_peak_kib'] / KIB:.1f} MiB"
                        if r["ok"] else f"FAILED: {r['error']}"))
                    time.sleep(args.pause)
        finally:
            for s in live:
                s.stop()
    return runs


def verify_final(runs, servers):
    """After every server has stopped: count each run's Maildir again. A message delivered
    twice after a restart, or one that never arrived, shows here."""
    by_name = {s.name: s for s in servers}
    for r in runs:
        s = by_name.get(r["server"])
        if not s or not s.stores or "rcpt" not in r:
            continue
        n, tmp, _ = count_files(s.maildir(r["rcpt"]))
        r["files_final"] = n
        r["tmp_final"] = tmp
        if n != r["messages"]:
            r["ok"] = False
            r["error"] = (r.get("error") or "") + f"; final count {n}, expected {r['messages']}"


# ---------------------------------------------------------------------------------------
# report

def summarize(runs, args):
    """{(size, sessions, mode): {server: summary}} with medians over repetitions."""
    cells = {}
    for r in runs:
        cells.setdefault((r["size"], r["sessions"], r["mode"]), {}) \
            .setdefault(r["server"], []).append(r)
    out = {}
    for key, per in cells.items():
        out[key] = {}
        for name, rs in per.items():
            good = [r for r in rs if r["ok"]]
            fs = [r["fsync"] for r in good if r.get("fsync")]
            acc = [r for r in good if r.get("fsync")]
            def per_msg(kind):
                vals = [f[kind] / r["messages"] for f, r in zip(fs, acc)]
                return median(vals) if vals else None
            counters = [r.get("counters", {}) for r in good if r.get("counters")]
            out[key][name] = {
                "reps": len(rs), "ok": len(good),
                "errors": [r["error"] for r in rs if not r["ok"]],
                "accept_rate": median([r["accept_rate"] for r in good]),
                "e2e_rate": median([r.get("e2e_rate") for r in good]),
                "latency_ms": median([r["latency_ms"] for r in good]),
                "rss_peak_mib": max([r.get("rss_peak_kib", 0) for r in rs] or [0]) / KIB,
                "pss_peak_mib": max([r.get("pss_peak_kib", 0) for r in rs] or [0]) / KIB,
                "cpu_ms_per_msg": median([1000 * r["cpu_s"] / r["messages"] for r in good
                                          if "cpu_s" in r]),
                "gen_cpu_ms_per_msg": median([1000 * r["gen_cpu_s"] / r["messages"]
                                              for r in good if "gen_cpu_s" in r]),
                "other_cpu_pct": median([r.get("other_cpu_pct") for r in good]),
                "hwm_mib": (max([r.get("hwm_kib") or 0 for r in rs] or [0]) / KIB) or None,
                "fsync_queue": per_msg("queue"), "fsync_maildir": per_msg("maildir"),
                "fsync_total": per_msg("total"),
                "ctr_fsync_per_msg": median([c["fsyncs"] / c["committed"] for c in counters
                                             if c.get("committed")]),
                "ctr_msgs_per_batch": median([c["committed"] / c["commit_batches"]
                                              for c in counters if c.get("commit_batches")]),
                "files": [(r.get("files_final", r.get("files")), r["messages"]) for r in rs
                          if "files" in r or "files_final" in r],
            }
    return out


def fmt(v, digits=0, unit=""):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{unit}"


def ratio(a, b):
    if a is None or not b:
        return "–"
    return f"{a / b:.2f}×"


def cell_order(key):
    size, sess, mode = key
    return (size, sess, MODES.index(mode))


def tables(summary, idle):
    """The results as Markdown tables (printed and written to docs/PERFORMANCE.md)."""
    keys = sorted(summary, key=cell_order)
    g = lambda key, srv, field: summary[key].get(srv, {}).get(field)
    lines = ["### Rates (messages/s, median)", "",
             "| size | sessions | connection | tern accept | Postfix accept | sink accept "
             "| tern/Postfix | tern/sink | tern end-to-end | Postfix end-to-end "
             "| e2e tern/Postfix |",
             "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for key in keys:
        size, sess, mode = key
        ta, pa, sa = (g(key, s, "accept_rate") for s in SERVERS)
        te, pe = g(key, "tern", "e2e_rate"), g(key, "postfix", "e2e_rate")
        lines.append(f"| {size // KIB} KiB | {sess} | {MODE_TEXT[mode]} | {fmt(ta)} | {fmt(pa)} "
                     f"| {fmt(sa)} | {ratio(ta, pa)} | {ratio(ta, sa)} | {fmt(te)} | {fmt(pe)} "
                     f"| {ratio(te, pe)} |")
    lat = [k for k in keys if k[1] == 1]
    if lat:
        lines += ["", "### Mean latency at 1 session (ms per message = elapsed / messages)", "",
                  "| size | connection | tern | Postfix | sink | tern/Postfix |",
                  "|---|---|--:|--:|--:|--:|"]
        for key in lat:
            tl, pl, sl = (g(key, s, "latency_ms") for s in SERVERS)
            lines.append(f"| {key[0] // KIB} KiB | {MODE_TEXT[key[2]]} | {fmt(tl, 2)} "
                         f"| {fmt(pl, 2)} | {fmt(sl, 2)} | {ratio(tl, pl)} |")
    lines += ["", "### Memory and CPU", "",
              "Peak RSS in MiB: tern and sink VmHWM (exact, per cell); Postfix the sampled peak "
              "of the sum over its processes, which counts shared pages once per process, so "
              "its summed PSS is shown too. CPU: milliseconds of CPU (user + system, all "
              "threads and processes) per message, from the start of the load until the last "
              "file is in the Maildir; *smtp-source* is the load generator's own share; "
              "*other CPU* is the rest of the machine's busy time during the run, in % of all "
              "cores (kernel threads completing disk I/O, and anyone else's work: a high "
              "figure means a noisy run).", "",
              "| size | sessions | connection | RSS tern | RSS Postfix | PSS Postfix | RSS sink "
              "| CPU ms/msg tern | Postfix | sink | smtp-source (tern run) "
              "| other CPU % (tern run) |",
              "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for key in keys:
        size, sess, mode = key
        lines.append(
            f"| {size // KIB} KiB | {sess} | {MODE_TEXT[mode]} "
            f"| {fmt(g(key, 'tern', 'hwm_mib') or g(key, 'tern', 'rss_peak_mib'), 1)} "
            f"| {fmt(g(key, 'postfix', 'rss_peak_mib'), 1)} "
            f"| {fmt(g(key, 'postfix', 'pss_peak_mib'), 1)} "
            f"| {fmt(g(key, 'sink', 'hwm_mib') or g(key, 'sink', 'rss_peak_mib'), 1)} "
            f"| {fmt(g(key, 'tern', 'cpu_ms_per_msg'), 3)} "
            f"| {fmt(g(key, 'postfix', 'cpu_ms_per_msg'), 3)} "
            f"| {fmt(g(key, 'sink', 'cpu_ms_per_msg'), 3)} "
            f"| {fmt(g(key, 'tern', 'gen_cpu_ms_per_msg'), 3)} "
            f"| {fmt(g(key, 'tern', 'other_cpu_pct'), 0)} |")
    lines += ["", "### fsyncs and Maildir files", "",
              "fsyncs per accepted message, counted from the start of a run to the start of the "
              "same server's next run: *queue* = tern's queue-commit thread / Postfix's "
              "cleanup(8); *total* adds the Maildir deliveries (tern's deliver/N worker threads / "
              "Postfix's virtual(8)) and anything else. *msgs/batch*: messages per queue commit "
              "batch from ternd's own counters (status records are batches too). Files: Maildir "
              "files counted after every server stopped, against messages sent, summed over "
              "the repetitions.", "",
              "| size | sessions | connection | tern queue | tern total | Postfix queue "
              "| Postfix total | tern msgs/batch | files tern | files Postfix |",
              "|---|--:|---|--:|--:|--:|--:|--:|---|---|"]

    def files(key, srv):
        f = g(key, srv, "files")
        if not f:
            return "–"
        got, want = sum(a or 0 for a, _ in f), sum(b for _, b in f)
        return f"{got}/{want} {'ok' if got == want and all(a == b for a, b in f) else 'MISMATCH'}"

    for key in keys:
        size, sess, mode = key
        tq = g(key, "tern", "fsync_queue")
        if tq is None:
            tq = g(key, "tern", "ctr_fsync_per_msg")
        lines.append(
            f"| {size // KIB} KiB | {sess} | {MODE_TEXT[mode]} | {fmt(tq, 3)} "
            f"| {fmt(g(key, 'tern', 'fsync_total'), 3)} "
            f"| {fmt(g(key, 'postfix', 'fsync_queue'), 3)} "
            f"| {fmt(g(key, 'postfix', 'fsync_total'), 3)} "
            f"| {fmt(g(key, 'tern', 'ctr_msgs_per_batch'), 1)} "
            f"| {files(key, 'tern')} | {files(key, 'postfix')} |")
    if idle:
        lines += ["", "### Idle connections to ternd", "",
                  "| connections held | RSS before | RSS holding them | per connection "
                  "| RSS after closing | sessions (ternctl) | time to open |",
                  "|--:|--:|--:|--:|--:|--:|--:|"]
        if idle.get("rss_held_kib"):
            per = (idle["rss_held_kib"] - idle["rss_before_kib"]) / max(idle["held"], 1)
            lines.append(f"| {idle['held']:,} of {idle['connections']:,} "
                         f"| {idle['rss_before_kib'] / KIB:.1f} MiB "
                         f"| {idle['rss_held_kib'] / KIB:.1f} MiB | {per:.1f} KiB "
                         f"| {idle['rss_after_kib'] / KIB:.1f} MiB "
                         f"| {idle.get('sessions_reported', '–')} | {idle['connect_s']:.1f} s |")
        else:
            lines.append(f"| failed: {idle.get('error')} | | | | | | |")
    errors = []
    for key in keys:
        for srv, s in summary[key].items():
            for e in s["errors"]:
                errors.append(f"- {srv}, {key[0] // KIB} KiB, {key[1]} sessions, "
                              f"{MODE_TEXT[key[2]]}: {e}")
    if errors:
        lines += ["", "### Failed runs", ""] + errors
    return "\n".join(lines)


def targets(summary, idle):
    """The targets of issue 7, each PASS/FAIL/n/a with the figures."""
    out = []

    def check(name, ok, detail):
        out.append(f"- {'PASS' if ok else 'FAIL' if ok is not None else 'n/a '} {name}: {detail}")

    for sess in (10, 100):
        for mode in MODES:
            key = (1024, sess, mode)
            if key not in summary:
                continue
            s = summary[key]
            ta, pa, sa = (s.get(n, {}).get("accept_rate") for n in SERVERS)
            te, pe = s.get("tern", {}).get("e2e_rate"), s.get("postfix", {}).get("e2e_rate")
            tag = f"1 KiB, {sess} sessions, {MODE_TEXT[mode]}"
            if ta and pa:
                check(f"accept ≥ 3× Postfix ({tag})", ta >= 3 * pa, ratio(ta, pa))
            if te and pe:
                check(f"end-to-end ≥ 3× Postfix ({tag})", te >= 3 * pe, ratio(te, pe))
            if ta and sa:
                check(f"accept ≥ ½ smtp-sink ({tag})", ta >= 0.5 * sa, ratio(ta, sa))
            fq = s.get("tern", {}).get("fsync_queue")
            if fq is None:
                fq = s.get("tern", {}).get("ctr_fsync_per_msg")
            if sess == 100 and fq is not None:
                check(f"queue fsyncs per message < 0.25 ({tag})", fq < 0.25, f"{fq:.3f}")
    if idle:
        if idle.get("ok"):
            mib = idle["rss_held_kib"] / KIB
            check(f"{idle['connections']:,} idle sessions under 200 MiB", mib < 200,
                  f"{mib:.1f} MiB")
        else:
            check(f"{idle['connections']:,} idle sessions under 200 MiB", False,
                  idle.get("error"))
    bad = [(k, n) for k, s in summary.items() for n, v in s.items()
           if any(a != b for a, b in v["files"])]
    anyfiles = any(v["files"] for s in summary.values() for v in s.values())
    if anyfiles:
        check("no message lost or duplicated (Maildir files = messages sent, every run)",
              not bad, "all runs match" if not bad else
              ", ".join(f"{n} {k[0] // KIB} KiB/{k[1]}/{k[2]}" for k, n in bad))
    return "\n".join(out)


def machine_info():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = proc_meminfo_gib()
    return {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "memory_gib": mem, "loadavg": open("/proc/loadavg").read().split()[:3],
            "python": platform.python_version()}


def proc_meminfo_gib():
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / MIB, 1)
    except OSError:
        pass
    return None


def results_markdown(info, versions, args, argv, tracer, servers, body, target_text):
    env = "".join(f"{k}={os.environ[k]} " for k in ("TERND", "TERNCTL") if k in os.environ)
    cmd = "make bench" if not argv and not env else \
        env + "/usr/bin/python3 bench/run.py " + " ".join(argv)
    ports = ", ".join(f"{s.name} {s.port}" for s in servers)
    lines = [
        "## Latest results", "",
        f"- date: {info['date']}; machine: {info['nproc']} cores ({info['cpu']}), "
        f"{info['memory_gib']} GiB, kernel {info['kernel']}; load average at start "
        f"{' '.join(info['loadavg'])}",
        f"- versions: {'; '.join(versions)}",
        f"- command: `{cmd}`",
        f"- matrix: sizes {', '.join(f'{s // KIB} KiB' for s in args.sizes)}; sessions "
        f"{', '.join(map(str, args.sessions))}; {', '.join(MODE_TEXT[m] for m in args.modes)}; "
        f"{args.reps} repetitions (medians); messages per run "
        + (str(args.messages) if args.messages else
           ", ".join(f"{c} ({s // KIB} KiB × {n})" for (s, n), c in sorted(DEFAULT_COUNTS.items())
                     if s in args.sizes and n in args.sessions)),
        f"- loopback ports: {ports}",
        f"- tern configuration: the contract configuration"
        + (f" plus `{'; '.join(args.tern_conf)}`" if args.tern_conf
           else " as written (no keys added)"),
        f"- fsyncs counted with {tracer.describe()}",
        f"- waited {info['settled_s']:.0f} s at the start for an earlier bench's removed "
        f"inodes to age (see \"Inode reuse\")" if info.get("settled_s") else None,
        f"- file system: {info['creates_fresh']:,.0f} file creates/s in a fresh inode group "
        f"(where the servers write), {info['creates_tmpdir']:,.0f}/s in {info['tmpdir']} "
        f"(inode reuse, see \"Method\")"
        + ("" if info.get("spread") else "; chattr +T failed, groups were NOT spread"),
        "", body, "", "### Targets of issue 7", "", target_text]
    return "\n".join(line for line in lines if line is not None)


def write_doc(markdown):
    text = DOC.read_text() if DOC.exists() else "# Performance\n"
    block = f"{DOC_BEGIN}\n{markdown}\n{DOC_END}"
    if DOC_BEGIN in text and DOC_END in text:
        head, rest = text.split(DOC_BEGIN, 1)
        tail = rest.split(DOC_END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text)


# ---------------------------------------------------------------------------------------
# profile (--profile): where ternd spends its time under load

def profile(args, base, ports):
    """ternd under `perf record` (cpu-clock sampling: this VM has no hardware counters)
    for one load run, then the same run under `strace -c -f` for syscalls per message."""
    tracer = FsyncTracer(None)
    size, sess, mode = args.sizes[0], args.sessions[-1], args.modes[0]
    count = args.messages or DEFAULT_COUNTS.get((size, sess), 2000)
    report = []
    for tool in ("perf", "strace"):
        if args.wait_quiet:
            wait_quiet(args.wait_quiet)
        t = TernServer(base / f"profile-{tool}", tracer, ports, args.tern_conf)
        out = t.dir / f"{tool}.out"
        orig = t.tracer.wrap
        if tool == "perf":
            t.tracer.wrap = lambda cmd, _o: ["perf", "record", "-q", "-e", "cpu-clock",
                                            "-F", "999", "-g", "-o", str(out), "--", *cmd]
        else:
            t.tracer.wrap = lambda cmd, _o: ["strace", "-f", "-c", "-o", str(out), "--", *cmd]
        try:
            t.start(timeout=60)
            r = run_load(t, size, sess, mode, count, args.timeout, args.rss_interval)
        finally:
            t.stop(timeout=120)
            t.tracer.wrap = orig
        report.append(f"== {tool}: {size // KIB} KiB, {sess} sessions, {MODE_TEXT[mode]}, "
                      f"{count} messages: accept {fmt(r.get('accept_rate'))}/s "
                      f"({'ok' if r['ok'] else r['error']})")
        if tool == "perf":
            # who (thread, library), then what (function, per thread); a VM without
            # hardware counters samples on cpu-clock, and the kernel's share shows up on
            # the point where interrupts are re-enabled (finish_task_switch, ...unlock_irq*)
            for sort, limit in (("comm,dso", "0.7"), ("comm,sym", "0.3")):
                rep = run_cmd(["perf", "report", "-i", str(out), "--no-children", "--stdio",
                               "--percent-limit", limit, "-g", "none", "--sort", sort],
                              timeout=600)
                report.append("\n".join(line for line in rep.stdout.splitlines()
                                        if line.strip() and not line.startswith("#")))
            # time under each syscall (inclusive, kernel stacks are complete)
            rep = run_cmd(["perf", "report", "-i", str(out), "--children", "--stdio",
                           "--percent-limit", "0.3", "-g", "none", "--sort", "sym"], timeout=600)
            report.append("inclusive, per syscall:\n" + "\n".join(
                line for line in rep.stdout.splitlines() if "__x64_sys_" in line))
        else:
            text = out.read_text(errors="replace") if out.exists() else ""
            report.append(text)
            report.append("syscalls per message (≥ 0.01):")
            for line in text.splitlines():
                f = line.split()
                if len(f) >= 5 and f[3].isdigit() and int(f[3]) / count >= 0.01:
                    report.append(f"  {f[-1]:20} {int(f[3]) / count:8.2f}")
    return "\n".join(report)


# ---------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="tern vs Postfix vs smtp-sink on loopback (see docs/PERFORMANCE.md)")
    p.add_argument("--quick", action="store_true",
                   help="1 KiB only, 1 repetition, 500 messages per run, 2,000 idle connections; "
                        "does not rewrite docs/PERFORMANCE.md unless --doc")
    p.add_argument("--sizes", help="message payload sizes in bytes, comma-separated "
                                   "(default 1024,102400)")
    p.add_argument("--sessions", help="parallel sessions, comma-separated (default 1,10,100)")
    p.add_argument("--modes", help="new,keep: a new connection per message and/or many "
                                   "messages per connection (default both)")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help="which servers: tern,postfix,sink (default all)")
    p.add_argument("--reps", type=int, help="repetitions per cell (default 3)")
    p.add_argument("--messages", type=int, help="messages per run (default by size and "
                                                "sessions, thousands)")
    p.add_argument("--idle", type=int, help="idle connections to hold open to ternd "
                                            "(default 10000; 0 skips)")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds allowed for a run's load, and again for its delivery (300)")
    p.add_argument("--pause", type=float, default=0.5, help="seconds between runs (0.5)")
    p.add_argument("--wait-quiet", type=float, default=60, metavar="SECONDS",
                   help="before each cell, wait up to this long for the machine to be under "
                        "25%% busy (60; 0 to not wait)")
    p.add_argument("--rss-interval", type=float, default=0.2,
                   help="seconds between RSS samples (0.2)")
    p.add_argument("--tern-conf", action="append", default=[], metavar="'KEY = VALUE'",
                   help="add a top-level key to ternd's configuration (reported with results)")
    p.add_argument("--settle", type=float, default=RECENTLY_DELETED_S, metavar="SECONDS",
                   help="if an earlier bench removed its folder less than 6 minutes ago, "
                        "wait up to this long first (360; see docs/PERFORMANCE.md)")
    p.add_argument("--fsync-tracer", choices=("auto", "perf", "strace", "none"),
                   default="auto", help="how fsyncs are counted (auto: perf, else strace)")
    p.add_argument("--dir", help="parent of the temporary folder (default $TMPDIR or /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--json", help="also write every run's raw measurements to this file")
    p.add_argument("--doc", dest="doc", action="store_true", default=None,
                   help="rewrite the results section of docs/PERFORMANCE.md")
    p.add_argument("--no-doc", dest="doc", action="store_false")
    p.add_argument("--profile", action="store_true",
                   help="instead of the matrix: profile ternd under one load (first size, "
                        "last sessions, first mode) with perf and strace -c")
    a = p.parse_args(argv)
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]
    a.sizes = ints(a.sizes) if a.sizes else ([1024] if a.quick else [1024, 102400])
    a.sessions = ints(a.sessions) if a.sessions else [1, 10, 100]
    a.modes = a.modes.split(",") if a.modes else list(MODES)
    a.servers = [s for s in a.servers.split(",") if s]
    a.reps = a.reps or (1 if a.quick else 3)
    if a.quick and not a.messages:
        a.messages = 500
    if a.idle is None:
        a.idle = 2000 if a.quick else 10000
    if a.doc is None:
        a.doc = not (a.quick or a.profile)
    for m in a.modes:
        if m not in MODES:
            p.error(f"unknown mode {m}")
    for s in a.servers:
        if s not in SERVERS:
            p.error(f"unknown server {s}")
    if not (1 <= a.reps <= 50) or any(not 1 <= s <= 1000 for s in a.sessions) \
            or (a.messages is not None and not 1 <= a.messages <= 1000000) \
            or any(not 1 <= s <= 50 * MIB for s in a.sizes) or not 0 <= a.idle <= 19000:
        p.error("a bound is out of range (reps 1-50, sessions 1-1000, messages 1-1e6, "
                "sizes up to 50 MiB, idle up to 19000)")
    return a


def preflight(args):
    missing = [t for t in ("smtp-source", "smtp-sink", "postfix", "postconf")
               if not shutil.which(t)]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run scripts/install-deps bench (as root)")
    if "tern" in args.servers or args.profile:
        for f in (TERND, TERNCTL):
            if not os.access(f, os.X_OK):
                sys.exit(f"{f} is missing: build it (make) or set TERND/TERNCTL")
    if "postfix" in args.servers and os.geteuid() != 0:
        sys.exit("a private Postfix instance needs root (its daemons drop to the postfix user)")


def disk_estimate(args):
    """Bytes the Maildirs will hold at the end (tern + Postfix keep every message)."""
    total = 0
    for size in args.sizes:
        for sess in args.sessions:
            count = args.messages or DEFAULT_COUNTS.get((size, sess), 2000)
            per = (size + 600 + 4095) // 4096 * 4096
            total += per * count * args.reps * len(args.modes)
    return total * sum(1 for s in args.servers if s in ("tern", "postfix"))


def main(argv):
    args = parse_args(argv)
    preflight(args)
    need = disk_estimate(args)
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    free = shutil.disk_usage(args.dir or tempfile.gettempdir()).free
    if not args.profile and need > 0.8 * free:
        sys.exit(f"the runs would store {need / 2**30:.1f} GiB; only {free / 2**30:.1f} GiB free")
    settled = settle_after_cleanup(args.settle)
    info = machine_info()  # date and load as the measurement starts, after any settling
    info["settled_s"] = settled
    base = pathlib.Path(tempfile.mkdtemp(prefix="tern-bench-", dir=args.dir))
    os.chmod(base, 0o755)
    info["spread"] = spread_dir(base)
    info["tmpdir"] = str(base.parent)
    info["creates_fresh"] = create_rate(base / "probe-fresh")
    probe_tmp = pathlib.Path(tempfile.mkdtemp(prefix="tern-bench-probe-", dir=base.parent))
    info["creates_tmpdir"] = create_rate(probe_tmp / "files")
    log(f"folder {base}; {info['nproc']} cores; load {' '.join(info['loadavg'])}; "
        f"Maildirs will hold ≈ {need / 2**30:.1f} GiB until the end")
    log(f"file creates/s: {info['creates_fresh']:.0f} in a fresh inode group, "
        f"{info['creates_tmpdir']:.0f} in {base.parent}"
        + ("" if info["spread"] else " (chattr +T failed: groups not spread)"))
    ports = set()
    tracer = FsyncTracer.detect(args.fsync_tracer)
    log(f"fsyncs: {tracer.describe()}")
    servers = []
    try:
        if args.profile:
            print(profile(args, base, ports))
            return 0
        for name in args.servers:
            if name == "tern":
                s = TernServer(base, tracer, ports, args.tern_conf)
            elif name == "postfix":
                s = PostfixServer(base, tracer, ports)
            else:
                s = SinkServer(base, tracer, ports)
            s.check()
            servers.append(s)
        versions = [s.version() for s in servers]
        log("; ".join(versions))
        t_begin = time.monotonic()
        runs = run_matrix(args, servers)
        idle = None
        tern = next((s for s in servers if s.name == "tern"), None)
        if args.idle and tern:
            log(f"idle: {args.idle} connections to ternd")
            idle = idle_test(tern, args.idle, max(60.0, args.timeout))
            log(f"idle: {idle}")
        verify_final(runs, servers)
        summary = summarize(runs, args)
        body = tables(summary, idle)
        target_text = targets(summary, idle)
        md = results_markdown(info, versions, args, argv, tracer, servers, body, target_text)
        print(md)
        log(f"bench took {time.monotonic() - t_begin:.0f} s")
        if args.json:
            for r in runs:
                r.pop("t_start", None)
            pathlib.Path(args.json).write_text(json.dumps(
                {"info": info, "versions": versions, "argv": argv, "runs": runs, "idle": idle,
                 "summary": {f"{k[0]}/{k[1]}/{k[2]}": v for k, v in summary.items()}},
                indent=1, default=str))
        if args.doc:
            write_doc(md)
            log(f"wrote {DOC.relative_to(ROOT)}")
        failed = [r for r in runs if not r["ok"]] or (idle and not idle.get("ok"))
        return 1 if failed else 0
    finally:
        for s in servers:
            try:
                s.stop()
            except Exception as e:  # keep stopping the others
                log(f"{s.name}: stop: {e}")
        if args.keep:
            log(f"kept {base} and {probe_tmp}")
        else:
            CLEANUP_MARK.touch()  # before too: a bench starting meanwhile waits as well
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(probe_tmp, ignore_errors=True)
            CLEANUP_MARK.touch()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
