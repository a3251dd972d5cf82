"""Replicas of the built `moe-serve` behind Debian's nginx with Deploy/nginx/moe-serve.conf, on loopback.

Shared by scripts/nginx_failover_test.py (the CI test) and scripts/bench_affinity.py (docs/SCALING.md).
Standard library only; everything runs as the current user in a temporary directory (nginx with
`-p`/`-c`, its pid, logs and temp files there) and binds 127.0.0.1 on free ports.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NGINX_CONF = os.path.join(ROOT, "Deploy", "nginx", "moe-serve.conf")


def free_port():
    """A port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path, timeout=10.0):
    """(status, body text) of a GET on loopback; (0, error) when the connection fails."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace")
        conn.close()
        return response.status, body
    except OSError as error:
        return 0, str(error)


def parse_metrics(text):
    """Prometheus text exposition → {(name, frozenset(labels)): value}. Uses prometheus_client's
    parser when it is installed (MOE_PYTHON's venv has it), a minimal one otherwise."""
    samples = {}
    try:
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples
    except ImportError:
        pass
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def metric_sum(samples, name, **labels):
    """Sum of every sample named `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


class Replica:
    """One `moe-serve serve` on 127.0.0.1:port; can be killed and restarted on the same port."""

    def __init__(self, binary, port, workdir, name, extra_args=()):
        self.binary, self.port, self.workdir, self.name = binary, port, workdir, name
        self.extra_args = list(extra_args)
        self.process = None
        self.starts = 0

    def start(self):
        self.starts += 1
        log = open(os.path.join(self.workdir, f"{self.name}.{self.starts}.log"), "wb")
        self.process = subprocess.Popen(
            [self.binary, "serve", "--host", "127.0.0.1", "--port", str(self.port)] + self.extra_args,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def wait_ready(self, timeout=180.0):
        """Polls /health until 200 (the model is loaded)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} while loading (see {self.workdir})")
            if http_get(self.port, "/health", timeout=5)[0] == 200:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready within {timeout:.0f} s")

    def kill(self):
        """SIGKILL: the replica dies at once, mid-request, as on an OOM kill or a lost node."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def metrics(self):
        status, body = http_get(self.port, "/metrics")
        if status != 200:
            raise RuntimeError(f"{self.name}: /metrics answered {status}: {body[:200]}")
        return parse_metrics(body)


def render_nginx_conf(replica_ports, listen_port, logdir):
    """The committed Deploy/nginx/moe-serve.conf with loopback addresses: each upstream's server
    lines become one line per replica (same parameters), `listen` the given port, logs `logdir`."""
    text = open(NGINX_CONF).read()
    server_re = re.compile(r"^(\s*)server 10\.0\.0\.\d+:8080( [^;]*)?;\n", re.M)

    def upstream(match):
        block = match.group(0)
        first = server_re.search(block)
        indent, params = first.group(1), first.group(2) or ""
        lines = "".join(f"{indent}server 127.0.0.1:{p}{params};\n" for p in replica_ports)
        block = server_re.sub("", block)
        return block.replace("{\n", "{\n" + lines, 1)

    text, n = re.subn(r"upstream \w+ \{.*?\n\}", upstream, text, flags=re.S)
    assert n == 2, "expected two upstream blocks in Deploy/nginx/moe-serve.conf"
    text, n = re.subn(r"listen 8080;", f"listen 127.0.0.1:{listen_port};", text)
    assert n == 1
    return text.replace("/var/log/nginx/", logdir.rstrip("/") + "/")


class Nginx:
    """Debian's nginx in the foreground with a prefix, pid, logs and temp paths in `workdir`."""

    def __init__(self, workdir, replica_ports, listen_port=None):
        self.workdir = workdir
        self.port = listen_port or free_port()
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(self.binary):
            raise RuntimeError("nginx is not installed (scripts/install-deps.sh installs it)")
        site = os.path.join(workdir, "moe-serve.conf")
        with open(site, "w") as f:
            f.write(render_nginx_conf(replica_ports, self.port, workdir))
        user = ""
        if os.geteuid() == 0:
            # As root the workers would switch to `nobody`, which cannot use our temp directory.
            import pwd
            user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n"
        temp = "".join(f"    {kind}_temp_path {workdir}/{kind}_temp;\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        self.conf = os.path.join(workdir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(f"{user}daemon off;\nworker_processes 1;\npid {workdir}/nginx.pid;\n"
                    f"error_log {workdir}/error.log warn;\nevents {{ worker_connections 1024; }}\n"
                    f"http {{\n{temp}    include {site};\n}}\n")
        self.process = None

    def check(self):
        """`nginx -t` on the rendered configuration; returns its output, raises when invalid."""
        result = subprocess.run([self.binary, "-t", "-p", self.workdir, "-c", self.conf],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"nginx -t failed: {result.stderr}")
        return result.stderr

    def start(self):
        self.process = subprocess.Popen([self.binary, "-p", self.workdir, "-c", self.conf],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            if http_get(self.port, "/nginx-health", timeout=2)[0] == 200:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"nginx did not start: {open(os.path.join(self.workdir, 'error.log')).read()[-2000:]}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finishes open requests, then exits
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def access_log(self):
        """Parsed access log lines: dicts with status, upstream (list of addresses), session, tag."""
        path = os.path.join(self.workdir, "moe-serve.access.log")
        if not os.path.exists(path):
            return []
        entries = []
        line_re = re.compile(r'"(?P<request>[^"]*)" (?P<status>\d+) \d+ upstream=(?P<upstream>.*?) '
                             r'upstream_status=(?P<ustatus>.*?) request_time=\S+ session=(?P<session>\S*) tag=(?P<tag>\S*)$')
        for line in open(path):
            m = line_re.search(line.strip())
            if m:
                upstream = [a.strip() for a in re.split(r"[,:]\s", m.group("upstream")) if a.strip() and a.strip() != "-"]
                entries.append({"request": m.group("request"), "status": int(m.group("status")), "upstream": upstream,
                                "upstream_status": m.group("ustatus"), "session": m.group("session"), "tag": m.group("tag")})
        return entries


def complete(port, path, body, headers=None, stream=False, timeout=120.0):
    """One generation request through `port`. Returns (outcome, detail): outcome is "ok" (a full
    response: JSON with choices, or a stream ending in [DONE]), "http_error" (a status other than
    200, e.g. 502), "closed" (the connection ended early: refused, reset or a truncated stream) or
    "timeout" (no answer within `timeout`: the failure the tests forbid)."""
    payload = dict(body)
    payload["stream"] = stream
    data = json.dumps(payload).encode()
    all_headers = {"Content-Type": "application/json"}
    all_headers.update(headers or {})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=data, headers=all_headers)
        response = conn.getresponse()
        if response.status != 200:
            response.read()
            return "http_error", response.status
        if not stream:
            reply = json.loads(response.read())
            return ("ok", reply) if reply.get("choices") else ("closed", "no choices")
        text = b""
        while True:
            line = response.readline()
            if not line:
                return "closed", "stream ended without [DONE]"
            text += line
            if line.strip() == b"data: [DONE]":
                return "ok", text
    except socket.timeout:
        return "timeout", f"no answer within {timeout} s"
    except (http.client.HTTPException, ConnectionError, OSError, ValueError) as error:
        if isinstance(error, OSError) and "timed out" in str(error):
            return "timeout", str(error)
        return "closed", f"{type(error).__name__}: {error}"
    finally:
        conn.close()
