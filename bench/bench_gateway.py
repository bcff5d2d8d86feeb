"""The gateway as operators run it, black-box: HTTP in, processes, SMTP and the SMS API out.

    .venv/bin/python bench/run_all.py [--quick] [--layouts run,systemd]
        [--databases sqlite,postgresql] [--conversations short,long] [--profile]

One measured "cell" per layout x database x conversation length:

- layout `run`: `sms311 run` (web and worker in one process, systemd/sms311.service);
  layout `systemd`: `sms311 worker` and `sms311 web`, two processes (sms311.target);
- database: SQLite (a file in a temporary folder) or PostgreSQL (a throwaway database on
  the server of --postgres, dropped afterwards);
- conversations: `short`, 1,000 residents who answered the city question (each conversation
  starts with its one held text, and gets a few more in the measured run); `long`, 20
  residents each with 150 texts already in one open conversation (all seeded through the
  webhook, with the mail server up, before anything is measured).

In each cell, in this order:

1. seeding (not measured), then the mail server is stopped;
2. baseline: a bare Flask app under `gunicorn -w 2` (bench/wsgi_apps.py: an empty TwiML
   answer), the same wrk load (16 connections, the same signed requests), CPU and RSS;
3. webhook ingest: wrk, 16 connections, signed inbound texts from the cell's residents, each
   with its own MessageSid and a marker; a text counts as accepted only when answered 200;
   then the time until the worker has made every stored text an email in the outbox;
4. drain: the mail server back, the emails waiting in the outbox made due at once (they
   waited out a long backoff), the time from the first to the last email at the server;
   baseline: aiosmtplib alone sending the same messages over one connection to the same
   server (bench/baselines.py);
5. the count check: every accepted text stored, every stored text in exactly one email at the
   mail server, nothing parked — else the cell says "LOST" and the run fails;
6. SMS: N agent replies queued in the outbox at once, the worker sending them to a fake
   Twilio API (tests/fake_twilio.py) at sms.max_per_second 1000; baseline: the twilio
   library alone, 16 threads (the dispatcher's SMS concurrency), same fake API.

CPU is utime + stime from /proc of the gateway's processes (in `sms311 run`, the web
server's threads — uvicorn's loop "web", the webhook's commit thread "ingest", its
"inbound_N" threads for texts that need an answer and a2wsgi's "WSGI_N" threads, named by
`py-spy dump` — are the request path and the other threads the worker). RSS is the summed
VmRSS of the layout's processes, sampled every 100 ms through the whole cell.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from aiosmtpd.controller import Controller
from twilio.request_validator import RequestValidator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    PYTHON,
    REPO,
    RssWatch,
    children,
    cpu_seconds,
    env,
    pss_bytes,
    rss_bytes,
    status_kb,
    stop,
    thread_cpu,
    thread_names,
    wait_for,
    wait_http,
)

CONNECTIONS = 16
SHORT_RESIDENTS = 1000
LONG_RESIDENTS = 20
LONG_TEXTS = 150  # texts in each long conversation before the measured run
SMS_THREADS = 16  # the dispatcher's sms_concurrency
MAX_PER_SECOND = 1000
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULTS = REPO / "bench" / "results"
BODIES = [
    "There is a pothole on Bank St at Gladstone, it is getting bigger every day",
    "Garbage was not picked up on our street this week (Elm Ave, 200 block)",
    "Streetlight out at the corner of King and Queen since Monday night",
    "Il y a un nid de poule devant le 123 rue Principale, c'est dangereux pour les velos",
    "The recycling bin was damaged by the truck this morning. Can I get a new one?",
    "Water main break? Lots of water coming up through the road on 5th Ave near the school.",
    "Graffiti on the bus shelter at Main & 3rd",
    "Noise complaint: construction starting at 5am every day this week on Oak Street. "
    "It is well before the allowed hours and the whole block is being woken up.",
    "Dead raccoon on the sidewalk in front of 42 Maple Crescent",
    "Tree branch hanging over the bike path near the river, looks like it could fall",
]
MARK = re.compile(rb"\[t(\d+)\]")


@dataclass(frozen=True)
class Cell:
    layout: str  # run | systemd
    database: str  # sqlite | postgresql
    conversations: str  # short | long

    @property
    def label(self) -> str:
        return f"{self.layout}/{self.database}/{self.conversations}"


# -- the world around the gateway ---------------------------------------------------------


class Sink:
    """An aiosmtpd server on a fixed port, keeping (arrival time, envelope, bytes) of each
    message; `stop()` refuses connections (the mail server is down), `start()` again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.records: list[tuple[float, str, list[str], bytes]] = []
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        record = (time.monotonic(), envelope.mail_from, list(envelope.rcpt_tos),
                  bytes(envelope.original_content or envelope.content))
        with self._lock:
            self.records.append(record)
        return "250 OK"

    def count(self) -> int:
        with self._lock:
            return len(self.records)

    def take(self) -> list[tuple[float, str, list[str], bytes]]:
        with self._lock:
            taken, self.records = self.records, []
        return taken

    def start(self) -> None:
        if self._controller is None:
            self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
            self._controller.start()

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()


class Counts:
    """Counts read straight from the database (SQL, nothing of the gateway's code)."""

    QUERY = ("SELECT (SELECT count(*) FROM messages WHERE direction = 'in'),"
             " (SELECT count(*) FROM outbox WHERE kind = 'email'),"
             " (SELECT count(*) FROM outbox WHERE status = 'pending'),"
             " (SELECT count(*) FROM outbox WHERE status = 'parked')")
    QUEUE = "SELECT count(*) FROM inbound_texts"

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            self._db: Any = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=60,
                                            isolation_level=None, check_same_thread=False)
        else:
            import psycopg

            self._db = psycopg.connect(url, autocommit=True)
        self._queue = True

    def read(self) -> dict[str, int]:
        stored, emails, pending, parked = self._db.execute(self.QUERY).fetchone()
        queued = 0
        if self._queue:
            try:
                queued = self._db.execute(self.QUEUE).fetchone()[0]
            except Exception:  # no inbound queue in this version of the gateway
                self._queue = False
        return {"stored": int(stored), "emails": int(emails), "pending": int(pending),
                "parked": int(parked), "queued": int(queued)}

    def make_emails_due(self) -> None:
        """The emails that failed while the mail server was down wait out their backoff
        (bench settings: 10 minutes); make them due now, as the end of a backoff would."""
        self._db.execute("UPDATE outbox SET next_attempt_at = created_at "
                         "WHERE status = 'pending' AND kind = 'email'")

    def close(self) -> None:
        self._db.close()


@contextlib.contextmanager
def database(kind: str, folder: Path, server: str) -> Iterator[str]:
    """A fresh database URL: a SQLite file in `folder`, or a throwaway PostgreSQL database."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'gateway.db'}"
        return
    import psycopg

    name = "sms311_bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_settings(folder: Path, db_url: str, web_port: int, smtp_port: int,
                   api: Any) -> Path:
    """Settings as an operator writes them (INFO logs), pointed at the bench's servers."""
    shutil.copy(REPO / "municipality_map.yaml", folder / "municipality_map.yaml")
    text = f"""\
database: {db_url}
municipality_map: municipality_map.yaml
state_dir: {folder / "var"}
public_url: http://127.0.0.1:{web_port}
web: {{listen: "127.0.0.1:{web_port}"}}
sms:
  provider: twilio
  account_sid: {api.account_sid}
  auth_token: {api.auth_token}
  sender: "31100"
  api_base_url: {api.base_url}
  max_per_second: {MAX_PER_SECOND}
email:
  from_address: "311 Text <sms@gateway.example>"
  reply_address: "reply+{{token}}@gateway.example"
  smtp: {{host: 127.0.0.1, port: {smtp_port}, security: none}}
fallback_mailbox: 311-unrouted@gateway.example
outbox:
  max_attempts: 1000
  base_backoff_seconds: 600
  max_backoff_seconds: 600
"""
    path = folder / "sms311.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def twilio_form(number: str, body: str) -> dict[str, str]:
    """What Twilio really posts for an inbound SMS (every field it sends)."""
    sid = "SM" + uuid.uuid4().hex
    return {
        "ToCountry": "CA", "ToState": "ON", "SmsMessageSid": sid, "NumMedia": "0",
        "ToCity": "", "FromZip": "", "SmsSid": sid, "FromState": "ON",
        "SmsStatus": "received", "FromCity": "OTTAWA", "Body": body, "FromCountry": "CA",
        "To": "31100", "MessagingServiceSid": "MG" + "1" * 32, "ToZip": "",
        "NumSegments": "1", "ReferralNumMedia": "0", "MessageSid": sid,
        "AccountSid": "AC" + "0" * 32, "From": number, "ApiVersion": "2010-04-01",
    }


class Texter:
    """Signed webhook requests, as Twilio sends them."""

    def __init__(self, public_url: str, token: str) -> None:
        self.url = public_url + "/sms/inbound"
        self.validator = RequestValidator(token)
        self._local = threading.local()

    def sign(self, form: dict[str, str]) -> str:
        return str(self.validator.compute_signature(self.url, form))

    def post(self, number: str, body: str) -> int:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        form = twilio_form(number, body)
        response = self._local.session.post(
            self.url, data=form, timeout=30, headers={"X-Twilio-Signature": self.sign(form)})
        return int(response.status_code)

    def write_requests(self, path: Path, numbers: list[str], count: int) -> None:
        """`count` pre-signed requests for wrk (bench/webhook.lua), text i marked [t<i>]."""
        import urllib.parse

        with path.open("w", encoding="utf-8") as out:
            for i in range(count):
                form = twilio_form(numbers[i % len(numbers)], f"[t{i}] {BODIES[i % len(BODIES)]}")
                out.write(f"/sms/inbound\t{self.sign(form)}\t{urllib.parse.urlencode(form)}\n")


def residents(cell: Cell) -> list[str]:
    if cell.conversations == "short":
        return [f"+1613555{i:04d}" for i in range(SHORT_RESIDENTS)]
    return [f"+1613555{5000 + i:04d}" for i in range(LONG_RESIDENTS)]


# -- load ---------------------------------------------------------------------------------


@dataclass
class Load:
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50: float
    p99: float

    @property
    def accepted(self) -> int:
        return self.requests - self.non_2xx

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds


def wrk(port: int, requests_file: Path, seconds: float) -> Load:
    result = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--timeout", "10s", "--latency",
         "-s", str(REPO / "bench" / "webhook.lua"), f"http://127.0.0.1:{port}"],
        env=env(SMS311_REQUESTS=str(requests_file)), capture_output=True, text=True, check=True,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("WRKJSON "))
    data = json.loads(line.removeprefix("WRKJSON "))
    return Load(
        requests=data["requests"], seconds=data["duration_us"] / 1e6,
        non_2xx=data["status_errors"],
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        p50=data["p50_us"] / 1e6, p99=data["p99_us"] / 1e6,
    )


# -- the processes under test -------------------------------------------------------------


class Layout:
    """The gateway's processes for one layout, with their CPU split request path / worker."""

    def __init__(self, layout: str, config: Path, folder: Path) -> None:
        self.layout = layout
        self.config = config
        self.log = folder / "gateway.log"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.web_threads: set[int] = set()

    def _spawn(self, command: str) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [PYTHON, "-m", "gateway", "--config", str(self.config), command],
                cwd=REPO, env=env(), stdout=out, stderr=subprocess.STDOUT,
            )

    def start(self, web_port: int) -> None:
        commands = ["run"] if self.layout == "run" else ["worker", "web"]
        for command in commands:
            self.processes[command] = self._spawn(command)
        wait_http(f"http://127.0.0.1:{web_port}/healthz", timeout=60)
        wait_for(lambda: "dispatcher started" in self.output(), 60, "the worker")
        if self.layout == "run":
            pid = self.processes["run"].pid
            names = thread_names(pid)
            self.web_threads = {tid for tid, name in names.items() if is_web_thread(name)}

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values()]

    def cpu(self) -> dict[str, float | None]:
        """CPU seconds so far: total, request path (web), worker."""
        if self.layout == "run":
            pid = self.processes["run"].pid
            total = cpu_seconds(pid)
            if not self.web_threads:
                return {"total": total, "web": None, "worker": None}
            threads = thread_cpu(pid)
            web = sum(threads.get(t, 0.0) for t in self.web_threads)
            return {"total": total, "web": web, "worker": total - web}
        web = cpu_seconds(self.processes["web"].pid)
        worker = cpu_seconds(self.processes["worker"].pid)
        return {"total": web + worker, "web": web, "worker": worker}

    def rss_now(self) -> str:
        """Each process's resident memory now ("worker 65 MB, web 71 MB")."""
        return ", ".join(f"{name} {rss_bytes(p.pid, with_children=False) / 2**20:.0f} MB"
                         for name, p in self.processes.items())

    def hwm(self) -> int:
        return sum(status_kb(pid, "VmHWM") for pid in self.pids) * 1024

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> list[str]:
        """SIGTERM each (the web half first); problems: an exit status, a traceback."""
        problems = []
        for name in ("web", "run", "worker"):
            process = self.processes.get(name)
            if process is not None:
                status = stop(process, 20)
                if status != 0:
                    problems.append(f"sms311 {name} exited {status} on SIGTERM")
        if "Traceback" in self.output():
            problems.append("the gateway logged a traceback: "
                            + self.output().split("Traceback", 1)[1][:600])
        return problems


def delta(after: dict[str, float | None], before: dict[str, float | None],
          key: str) -> float | None:
    a, b = after[key], before[key]
    return None if a is None or b is None else a - b


# -- one cell -----------------------------------------------------------------------------


@dataclass
class Result:
    cell: Cell
    bare: Load | None = None
    bare_cpu_ms: float = 0.0
    bare_rss: int = 0
    load: Load | None = None
    web_cpu_ms: float | None = None  # per accepted text, request path
    worker_cpu_ms: float | None = None  # per processed text, worker
    processed: int = 0
    processed_rate: float = 0.0
    backlog_after_wrk: int = 0
    drain_rate: float = 0.0
    drain_cpu_ms: float = 0.0
    drain_emails: int = 0
    smtp_rate: float = 0.0
    smtp_cpu_ms: float = 0.0
    sms_rate: float = 0.0
    sms_cpu_ms: float = 0.0
    sms_count: int = 0
    twilio_rate: float = 0.0
    twilio_cpu_ms: float = 0.0
    rss_peak: int = 0
    pss_peak: int = 0
    bare_pss: int = 0
    rss_hwm: int = 0
    seeded_texts: int = 0
    lost: list[str] = field(default_factory=list)  # the count check
    problems: list[str] = field(default_factory=list)  # anything else wrong
    profile: str = ""


def say(message: str) -> None:
    print(f"  {message}", flush=True)


def seed(cell: Cell, texter: Texter, numbers: list[str], sink: Sink, counts: Counts) -> int:
    """Each resident answers the city question (their first text is held, then emailed);
    long: 149 more texts each in the same conversation. Waits until every email is out."""

    def check(status: int, what: str) -> None:
        if status != 200:
            raise RuntimeError(f"seeding: {what} answered {status}")

    def dialogue(number: str) -> None:
        check(texter.post(number, "Pothole on Bank St, please fix [s]"), "a first text")
        check(texter.post(number, "Ottawa"), "the city answer")

    more = LONG_TEXTS - 1 if cell.conversations == "long" else 0

    def extra(job: tuple[str, int]) -> None:
        number, k = job
        check(texter.post(number, f"[s{k}] {BODIES[k % len(BODIES)]}"), "a seeding text")

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        list(pool.map(dialogue, numbers))
        list(pool.map(extra, [(n, k) for k in range(more) for n in numbers]))
    texts = len(numbers) * (1 + more)

    def settled() -> bool:
        now = counts.read()
        return sink.count() >= texts and now["pending"] == 0 and now["queued"] == 0

    wait_for(settled, 120 + texts / 20, "the seeding emails")
    return texts


def bare_baseline(requests_file: Path, seconds: float, result: Result) -> None:
    port = free_port()
    gunicorn = Path(PYTHON).parent / "gunicorn"
    process = subprocess.Popen(
        [str(gunicorn), "-w", "2", "-b", f"127.0.0.1:{port}", "--log-level", "warning",
         "bench.wsgi_apps:bare()"], cwd=REPO, env=env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/sms/inbound", method="POST")
        wrk(port, requests_file, 1)  # warm-up
        pids = [process.pid, *children(process.pid)]
        before = sum(cpu_seconds(p) for p in pids)
        load = wrk(port, requests_file, seconds)
        used = sum(cpu_seconds(p) for p in pids) - before
        result.bare = load
        result.bare_cpu_ms = used * 1000 / max(1, load.accepted)
        result.bare_rss = sum(rss_bytes(p, with_children=False) for p in pids)
        result.bare_pss = sum(pss_bytes(p, with_children=False) for p in pids)
    finally:
        stop(process)


def markers(records: list[tuple[float, str, list[str], bytes]]) -> Counter[int]:
    """The [t<i>] markers of the measured texts in these emails (bodies decoded if needed)."""
    import email
    import email.policy

    found: Counter[int] = Counter()
    for _at, _from, _to, raw in records:
        marks = MARK.findall(raw)
        if not marks:
            message = email.message_from_bytes(raw, policy=email.policy.default)
            text = "".join(str(part.get_content()) for part in message.walk()
                           if part.get_content_type() == "text/plain")
            marks = MARK.findall(text.encode("utf-8", "replace"))
        found.update({int(m) for m in marks})
    return found


def settle(predicate: Callable[[], bool], timeout: float) -> bool:
    """Wait until `predicate()` (polling); False after `timeout` seconds (the count check
    then says what is missing)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def first_to_last(times: list[float]) -> float:
    if len(times) < 2:
        return 0.0
    return (len(times) - 1) / max(1e-9, max(times) - min(times))


def run_cell(cell: Cell, seconds: float, sms_count: int, postgres: str,
             profile_to: Path | None = None) -> Result:
    """Measure one cell (see the module docstring); `profile_to`: py-spy the ingest instead
    (figures not kept, no drain or SMS)."""
    result = Result(cell)
    folder = Path(tempfile.mkdtemp(prefix=f"sms311-bench-{cell.layout}-"))
    from tests.fake_twilio import FakeTwilio

    api = FakeTwilio().start()
    sink = Sink(free_port())
    sink.start()
    web_port = free_port()
    layout: Layout | None = None
    try:
        with database(cell.database, folder, postgres) as db_url, RssWatch() as rss:
            config = write_settings(folder, db_url, web_port, sink.port, api)
            subprocess.run([PYTHON, "-m", "gateway", "--config", str(config), "db", "upgrade"],
                           cwd=REPO, env=env(), check=True, capture_output=True)
            layout = Layout(cell.layout, config, folder)
            layout.start(web_port)
            rss.pids = layout.pids
            counts = Counts(db_url)
            try:
                measure(cell, result, layout, counts, sink, api, folder, web_port, seconds,
                        sms_count, profile_to)
            finally:
                counts.close()
                result.rss_peak = rss.peak
                result.pss_peak = rss.pss_peak
                result.rss_hwm = layout.hwm()
                print("  RSS peak by process: " + ", ".join(
                    f"{name} {status_kb(p.pid, 'VmHWM') // 1024} MB"
                    for name, p in layout.processes.items()), flush=True)
                result.problems += layout.stop()
                layout = None
    except Exception as exc:  # one broken cell must not hide the others
        result.problems.append(f"{type(exc).__name__}: {exc}")
        if layout is not None:
            result.problems += layout.stop()
    finally:
        sink.stop()
        api.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return result


def measure(cell: Cell, result: Result, layout: Layout, counts: Counts, sink: Sink, api: Any,
            folder: Path, web_port: int, seconds: float, sms_count: int,
            profile_to: Path | None) -> None:
    texter = Texter(f"http://127.0.0.1:{web_port}", api.auth_token)
    numbers = residents(cell)
    started = time.monotonic()
    result.seeded_texts = seed(cell, texter, numbers, sink, counts)
    say(f"seeded {len(numbers)} residents, {result.seeded_texts} texts emailed "
        f"({time.monotonic() - started:.0f} s); RSS now {layout.rss_now()}")
    sink.take()
    requests_file = folder / "requests.tsv"
    prepared = int(seconds * 5000) + 5000
    texter.write_requests(requests_file, numbers, prepared)

    sink.stop()  # the mail server is down: the texts stay in the outbox
    bare_baseline(requests_file, seconds, result)
    before = counts.read()
    cpu0 = layout.cpu()
    spies: list[subprocess.Popen[bytes]] = []
    if profile_to is not None:
        spies = start_spies(layout.pids[0], profile_to)
    t0 = time.monotonic()
    load = wrk(web_port, requests_file, seconds)
    cpu1 = layout.cpu()
    result.load = load
    if load.accepted + CONNECTIONS >= prepared:
        result.problems.append("wrk ran out of prepared requests (texts sent twice)")
    after_wrk = counts.read()
    result.backlog_after_wrk = after_wrk["queued"]

    def processed() -> bool:
        now = counts.read()
        return now["queued"] == 0 and now["stored"] - before["stored"] >= load.accepted

    if not settle(processed, 60 + load.accepted / 20):
        result.problems.append("the worker had not processed every accepted text after "
                               f"{60 + load.accepted / 20:.0f} s")
    t_done = time.monotonic()
    cpu2 = layout.cpu()
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(60)
    done = counts.read()
    stored = done["stored"] - before["stored"]
    result.processed = stored
    result.processed_rate = stored / (t_done - t0)
    web = delta(cpu1, cpu0, "web")
    worker = delta(cpu2, cpu0, "worker")
    result.web_cpu_ms = None if web is None else web * 1000 / max(1, load.accepted)
    result.worker_cpu_ms = None if worker is None else worker * 1000 / max(1, stored)
    if stored < load.accepted:
        result.lost.append(f"{load.accepted - stored} of {load.accepted} texts answered 200 "
                           "were not stored")
    if stored > load.accepted + CONNECTIONS:
        result.lost.append(f"{stored} texts stored for {load.accepted} accepted")
    say(f"ingest {load.rate:.0f} texts/s (bare {result.bare.rate if result.bare else 0:.0f}/s)"
        f", {stored} stored, processed in {t_done - t0:.1f} s; RSS now {layout.rss_now()}")
    if profile_to is not None:
        result.profile = profile_summary(profile_to.with_suffix(".txt"), layout)
        return

    # drain: the mail server back
    sink.start()
    cpu3 = layout.cpu()
    counts.make_emails_due()
    expected = done["emails"] - before["emails"]

    def drained() -> bool:
        return sink.count() >= expected and counts.read()["pending"] == 0

    if not settle(drained, 120 + expected / 20):
        result.problems.append(f"the outbox had not drained after {120 + expected / 20:.0f} s")
    cpu4 = layout.cpu()
    records = sink.take()
    result.drain_emails = len(records)
    result.drain_rate = first_to_last([r[0] for r in records])
    result.drain_cpu_ms = ((cpu4["total"] or 0) - (cpu3["total"] or 0)) * 1000 / max(
        1, len(records))
    found = markers(records)
    emailed = len(found)
    if emailed < stored:
        result.lost.append(f"{stored - emailed} of {stored} stored texts never reached the "
                           "mail server")
    twice = sum(1 for n in found.values() if n > 1)
    if twice:
        result.problems.append(f"{twice} texts emailed more than once")
    if max(found, default=0) >= prepared:
        result.problems.append("an email carried a text that was never sent")
    parked = counts.read()["parked"]
    if parked:
        result.lost.append(f"{parked} outbox rows parked")
    smtp_baseline(records, folder, sink, result)
    say(f"drain {result.drain_rate:.0f} emails/s (aiosmtplib {result.smtp_rate:.0f}/s); "
        f"RSS now {layout.rss_now()}")

    # SMS: agent replies queued in the outbox
    sms(layout, counts, api, numbers, sms_count, result)
    say(f"SMS {result.sms_rate:.0f}/s (twilio library {result.twilio_rate:.0f}/s); "
        f"RSS now {layout.rss_now()}")


def smtp_baseline(records: list[tuple[float, str, list[str], bytes]], folder: Path,
                  sink: Sink, result: Result) -> None:
    eml = folder / "eml"
    eml.mkdir()
    for i, (_at, sender, recipients, raw) in enumerate(records):
        header = json.dumps({"from": sender, "to": recipients}).encode()
        (eml / f"{i:06d}.eml").write_bytes(header + b"\n" + raw)
    out = subprocess.run([PYTHON, str(REPO / "bench" / "baselines.py"), "smtp", str(eml),
                          str(sink.port)], cwd=REPO, env=env(), capture_output=True,
                         text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    arrived = sink.take()
    result.smtp_rate = first_to_last([r[0] for r in arrived])
    result.smtp_cpu_ms = data["cpu"] * 1000 / max(1, data["sent"])


def sms(layout: Layout, counts: Counts, api: Any, numbers: list[str], count: int,
        result: Result) -> None:
    from gateway.flows.payloads import SmsPayload
    from gateway.store import open_store

    base = len(api.arrivals)
    store = open_store(counts.url)
    try:
        cpu0 = layout.cpu()
        with store.transaction() as tx:
            for i in range(count):
                tx.enqueue("sms", SmsPayload(to=numbers[i % len(numbers)],
                                             body=f"A crew is on the way. [r{i}]").to_dict())
    finally:
        store.close()
    wait_for(lambda: len(api.arrivals) - base >= count, 60 + count / 20, "the SMS")
    cpu1 = layout.cpu()
    arrivals = api.arrivals[base:]
    result.sms_count = len(arrivals)
    result.sms_rate = first_to_last([t for t, _ in arrivals])
    result.sms_cpu_ms = ((cpu1["total"] or 0) - (cpu0["total"] or 0)) * 1000 / max(1, count)
    base = len(api.arrivals)
    out = subprocess.run([PYTHON, str(REPO / "bench" / "baselines.py"), "sms", api.base_url,
                          api.account_sid, api.auth_token, str(count), str(SMS_THREADS)],
                         cwd=REPO, env=env(), capture_output=True, text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    result.twilio_rate = first_to_last([t for t, _ in api.arrivals[base:]])
    result.twilio_cpu_ms = data["cpu"] * 1000 / max(1, data["sent"])


# -- profile ------------------------------------------------------------------------------


def start_spies(pid: int, to: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy record (GIL-holding samples, all threads) until SIGINT: an SVG flame graph
    and the raw stacks (with thread ids) for the summary."""
    spy = str(Path(PYTHON).parent / "py-spy")
    common = ["record", "--gil", "--nonblocking", "-r", "250", "-p", str(pid)]
    return [
        subprocess.Popen([spy, *common, "-f", "flamegraph", "-o", str(to)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([spy, *common, "--threads", "-f", "raw", "-o",
                          str(to.with_suffix(".txt"))],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]


def is_web_thread(name: str) -> bool:
    """A thread of `sms311 run`'s web half (see the module docstring)."""
    return name in ("web", "ingest") or name.startswith(("inbound_", "WSGI_"))


def profile_summary(raw: Path, layout: Layout, top: int = 15) -> str:
    """Top functions of a py-spy raw profile, for the request path (the web threads)
    and the worker (the others) apart: by own time and inclusive."""
    if not raw.exists():
        return "py-spy wrote nothing (is ptrace allowed?)"
    groups: dict[str, tuple[Counter[str], Counter[str]]] = {}
    totals: Counter[str] = Counter()
    web_ids = {f"{t:#x}" for t in layout.web_threads} | {str(t) for t in layout.web_threads}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread ")), "")
        where = "request path" if (any(i in thread for i in web_ids)
                                   or any(is_web_thread(w) for w in thread.split())) else "worker"
        names = [s for s in (_short(f) for f in frames) if s]
        if not names:
            continue
        count = int(count_text)
        totals[where] += count
        own, inclusive = groups.setdefault(where, (Counter(), Counter()))
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    lines = []
    for where, (own, inclusive) in sorted(groups.items()):
        total = totals[where]
        lines.append(f"{where}: {total} samples holding the GIL")
        lines.append("  own time:")
        lines += [f"    {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
        lines.append("  inclusive:")
        lines += [f"    {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top + 10)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """'handle (gateway/flows/text_in.py:97)' -> 'handle (gateway/flows/text_in.py)'."""
    if frame.startswith(("process ", "thread ")):
        return ""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/", str(REPO) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


# -- the matrix ---------------------------------------------------------------------------


def cells(layouts: list[str], databases: list[str], conversations: list[str]) -> list[Cell]:
    return [Cell(layout, db, conv) for db in databases for conv in conversations
            for layout in layouts]


def run(selected: list[Cell], seconds: float, sms_count: int, postgres: str,
        progress: Callable[[str], None] = print) -> list[Result]:
    results = []
    for cell in selected:
        progress(f"== {cell.label}")
        started = time.monotonic()
        result = run_cell(cell, seconds, sms_count, postgres)
        for problem in result.problems + result.lost:
            progress(f"  PROBLEM: {problem}")
        progress(f"  ({time.monotonic() - started:.0f} s)")
        results.append(result)
    return results


if __name__ == "__main__":
    from bench.run_all import main

    sys.exit(main())
