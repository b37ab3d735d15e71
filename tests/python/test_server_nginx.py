"""Several ``xdna-ep serve`` processes behind nginx (Debian's package), as the README's deployment says:
``least_conn`` over the servers, a request retried on the next server on 502/503 or a refused
connection. Two servers and nginx on loopback; clients send requests through nginx; one server gets
SIGTERM in the middle (it drains: finishes what it holds, answers 503 to the rest, exits); every
client must get a correct answer. Every process is started and stopped here.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from test_server import (  # noqa: E402 - helpers of the server tests, not fixtures
    AUDIO,
    REQUEST_TIMEOUT_S,
    free_port,
    golden_text,
    normalise,
    start_server,
)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_CONF = Path(__file__).resolve().parents[2] / "examples" / "nginx.conf"
CLIPS = ("jfk.wav", "librispeech-1995-1837-0001.wav")


def nginx_config(folder: Path, port: int, upstream_ports: list[int]) -> Path:
    """examples/nginx.conf (the README's deployment) with the test's ports and its own folder for state."""
    text = NGINX_CONF.read_text()
    servers = "".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=30s;\n" for p in upstream_ports)
    begin, end = text.index("    upstream xdna_ep {\n"), text.index("    }\n", text.index("    upstream xdna_ep {\n"))
    upstream = "    upstream xdna_ep {\n        least_conn;\n" + servers
    text = text[:begin] + upstream + text[end:]
    text = text.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{port};")
    # state under the test's folder: pid, logs, temporary bodies; in the foreground, so the test owns the process
    globals_ = (
        f"daemon off;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log info;\n"
    )
    text = globals_ + text.replace("http {\n", (
        "http {\n"
        f"    client_body_temp_path {folder}/body;\n    proxy_temp_path {folder}/proxy;\n"
        f"    fastcgi_temp_path {folder}/fastcgi;\n    uwsgi_temp_path {folder}/uwsgi;\n    scgi_temp_path {folder}/scgi;\n"
    ), 1)
    log_format_end = text.index("\n", text.index("log_format upstreams")) + 1
    text = text[:log_format_end] + f"    access_log {folder}/access.log upstreams;\n" + text[log_format_end:]
    path = folder / "nginx.conf"
    path.write_text(text)
    folder.chmod(0o777)  # nginx's worker (nobody, when started as root) writes the temporary bodies here
    return path


@pytest.mark.slow
def test_two_servers_behind_nginx_survive_one_stopping(tmp_path):
    if not Path(NGINX).exists():
        pytest.fail(f"nginx is not installed ({NGINX}): .ci/run installs Debian's nginx package")
    servers = [start_server(tmp_path / f"server{i}", "--max-queue", "8") for i in range(2)]
    nginx = None
    try:
        nginx_folder = tmp_path / "nginx"
        nginx_folder.mkdir()
        port = free_port()
        upstream_ports = [int(server.url.rsplit(":", 1)[1]) for server in servers]
        config = nginx_config(nginx_folder, port, upstream_ports)
        with open(nginx_folder / "stderr.log", "wb") as stderr:
            nginx = subprocess.Popen([NGINX, "-p", str(nginx_folder), "-c", str(config)],
                                     stdout=stderr, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert nginx.poll() is None, (nginx_folder / "stderr.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "nginx did not answer within 30 s"
            time.sleep(0.1)

        answered = []

        def client(index: int) -> list[tuple[str, httpx.Response]]:
            results = []
            for request in range(3):
                clip = CLIPS[(index + request) % len(CLIPS)]
                with open(AUDIO / clip, "rb") as audio:
                    response = httpx.post(f"{url}/v1/audio/transcriptions", data={"model": "whisper-1"},
                                          files={"file": (clip, audio)}, timeout=REQUEST_TIMEOUT_S)
                results.append((clip, response))
                answered.append(clip)
            return results

        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(client, index) for index in range(4)]
            # stop the first server once some answers came back, while the others are in flight
            while len(answered) < 3 and not all(future.done() for future in futures):
                time.sleep(0.05)
            servers[0].process.send_signal(signal.SIGTERM)
            results = [result for future in futures for result in future.result()]

        assert len(results) == 12
        for clip, response in results:
            assert response.status_code == 200, response.text
            assert normalise(response.json()["text"]).replace("cotton", "carton") == golden_text(clip)
        assert servers[0].process.wait(timeout=60) == 0  # drained and exited by itself
        # both servers answered (nginx's log names the server that gave each answer)
        log = [line.split("|") for line in (nginx_folder / "access.log").read_text().splitlines()]
        final = [line for line in log if line[0] == "/v1/audio/transcriptions"]
        assert len(final) == 12 and all(line[1] == "200" for line in final), log
        served_by = {line[2].split(",")[-1].strip() for line in final}  # the last server tried answered
        assert served_by == {f"127.0.0.1:{p}" for p in upstream_ports}, log
    finally:
        if nginx is not None and nginx.poll() is None:
            nginx.send_signal(signal.SIGQUIT)  # graceful stop of the master and its worker
            try:
                nginx.wait(timeout=30)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
        for server in servers:
            server.stop()
