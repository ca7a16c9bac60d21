"""A class on a real JupyterHub, on 127.0.0.1: three students at once.

Starts ``jupyterhub`` (pip) with ``configurable-http-proxy`` (npm, ``node_modules``), the
dummy authenticator and SimpleLocalProcessSpawner, loading the course configuration in
``deploy/jupyterhub_config.py``. Three students log in concurrently through the hub's
REST API (a token for username + password), start their servers, find their own copy
of the labs, upload lab 02's solution into it and execute it cell by cell through their
server's kernel websocket, to completion. One student's token cannot reach another's
server and a server cannot read outside its student's home. The memory of each
student's server and kernel is measured (psutil) and printed.

Everything listens on 127.0.0.1 and stops at the end; the whole test is bounded by
``TIME_LIMIT``. Marked ``slow`` (about two minutes on two cores): ``-m "not slow"``
skips it; ``bash test.sh`` runs it.
"""
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PROXY = ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
STUDENTS = ["student1", "student2", "student3"]
PASSWORD = secrets.token_hex(8)
TIME_LIMIT = 900
SOLUTION = ROOT / "solutions" / "02_hooks.ipynb"
COPY = "xailab/labs/02_hooks_solution.ipynb"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HUB_CONFIG = """\
c = get_config()  # noqa: F821
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_port}"
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.ConfigurableHTTPProxy.should_start = True
c.JupyterHub.db_url = "sqlite:///{tmp}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{tmp}/cookie_secret"
c.JupyterHub.pid_file = "{tmp}/hub.pid"
c.ConfigurableHTTPProxy.pid_file = "{tmp}/proxy.pid"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allowed_users = set({students!r})
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{tmp}/home/{{username}}"
c.JupyterHub.cleanup_servers = True
c.Spawner.args = {args!r}
load_subconfig({course_config!r})  # noqa: F821
"""


@pytest.fixture()
def hub(tmp_path):
    if not PROXY.exists():
        pytest.fail(f"{PROXY} is missing: run `bash scripts/setup.sh` (npm ci)")
    if shutil.which("jupyterhub", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("jupyterhub is not installed (it is in the [dev] extra: bash test.sh installs it)")
    port = _free_port()
    (tmp_path / "jupyterhub_config.py").write_text(HUB_CONFIG.format(
        port=port, hub_port=_free_port(), proxy_port=_free_port(), proxy=str(PROXY), tmp=tmp_path,
        password=PASSWORD, students=STUDENTS, args=["--allow-root"] if os.geteuid() == 0 else [], course_config=str(ROOT / "deploy" / "jupyterhub_config.py")))
    env = {**os.environ, "XAILAB_COURSE": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "hub.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub"), "-f", "jupyterhub_config.py"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "proc": proc, "log": tmp_path / "hub.log", "home": tmp_path / "home"}
    finally:
        _stop(proc)
        log.close()


def _stop(proc):
    """Stop the hub (it stops the proxy and the servers), then anything left in its tree."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    for child in tree:
        if child.is_running():
            child.kill()
    psutil.wait_procs(tree, timeout=10)


async def _api(client, method, url, token=None, body=None, ok=(200, 201, 202, 204)):
    from tornado.httpclient import HTTPRequest

    headers = {"Authorization": f"token {token}"} if token else {}
    request = HTTPRequest(url, method=method, headers=headers, request_timeout=120,
                          body=None if body is None else json.dumps(body), allow_nonstandard_methods=True,
                          follow_redirects=False)
    response = await client.fetch(request, raise_error=False)
    if ok and response.code not in ok:
        raise AssertionError(f"{method} {url}: HTTP {response.code} {response.body[:500]!r}")
    return response.code, (json.loads(response.body) if response.body and response.body[:1] in b"[{" else None)


async def _wait_for_hub(client, url, proc, log):
    deadline = time.time() + 120
    while True:
        try:
            code, _ = await _api(client, "GET", f"{url}/hub/api/", ok=None)
        except OSError:                                   # not listening yet
            code = None
        if code == 200:
            return
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError("JupyterHub did not start:\n" + log.read_text()[-3000:])
        await asyncio.sleep(0.5)


async def _log_in_and_start(client, url, name):
    """Log in with username and password (a token from the REST API), start the server."""
    _, reply = await _api(client, "POST", f"{url}/hub/api/users/{name}/tokens",
                          body={"auth": {"username": name, "password": PASSWORD}, "note": "test login"})
    token = reply["token"]
    await _api(client, "POST", f"{url}/hub/api/users/{name}/server", token=token)
    deadline = time.time() + 180
    while True:
        _, user = await _api(client, "GET", f"{url}/hub/api/users/{name}", token=token)
        if user["servers"].get("", {}).get("ready"):
            return token
        assert time.time() < deadline, f"{name}'s server did not start"
        await asyncio.sleep(1)


def _message(msg_type, content, session):
    return {"header": {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "session": session,
                       "username": "test", "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "content": content, "channel": "shell"}


async def _run_cell(ws, code, session):
    """Execute one cell through the kernel websocket; returns its outputs, raises on error."""
    request = _message("execute_request", {"code": code, "silent": False, "store_history": True,
                                           "user_expressions": {}, "allow_stdin": False,
                                           "stop_on_error": True}, session)
    await ws.write_message(json.dumps(request))
    outputs, msg_id = [], request["header"]["msg_id"]
    while True:
        raw = await ws.read_message()
        assert raw is not None, "the kernel websocket closed"
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["header"]["msg_type"], msg["content"]
        if kind in ("stream", "display_data", "execute_result"):
            outputs.append(content)
        elif kind == "error":
            raise AssertionError("cell failed:\n" + code[:300] + "\n" + "\n".join(content["traceback"])[-2000:])
        elif kind == "execute_reply" and msg["channel"] == "shell":
            assert content["status"] == "ok", content
            return outputs


async def _execute_solution(client, url, name, token):
    """Upload lab 02's solution into the student's labs and run it in their kernel."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    base = f"{url}/user/{name}"
    _, listing = await _api(client, "GET", f"{base}/api/contents/xailab/labs", token=token)
    assert "02_hooks.ipynb" in {f["name"] for f in listing["content"]}, "the labs were not copied"
    nb = nbformat.read(SOLUTION, as_version=4)
    await _api(client, "PUT", f"{base}/api/contents/{COPY}", token=token,
               body={"type": "notebook", "format": "json", "content": nb})
    _, session = await _api(client, "POST", f"{base}/api/sessions", token=token,
                            body={"path": COPY, "type": "notebook", "name": "", "kernel": {"name": "python3"}})
    kernel = session["kernel"]["id"]
    ws_url = base.replace("http://", "ws://") + f"/api/kernels/{kernel}/channels"
    ws = await websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"token {token}"}),
                                 max_message_size=100 * 2**20)
    start, n_outputs = time.time(), 0
    try:
        for cell in nb.cells:
            if cell.cell_type == "code":
                n_outputs += len(await _run_cell(ws, cell.source, uuid.uuid4().hex))
    finally:
        ws.close()
    return {"kernel": kernel, "seconds": time.time() - start, "outputs": n_outputs}


async def _isolation(client, url, tokens):
    """A student's token opens no other student's server; a server stays inside its home."""
    first, second = STUDENTS[0], STUDENTS[1]
    code, _ = await _api(client, "GET", f"{url}/user/{second}/api/contents/xailab/labs", token=tokens[first], ok=None)
    assert code in (302, 403, 404), f"{first} read {second}'s files (HTTP {code})"
    code, _ = await _api(client, "GET", f"{url}/user/{first}/api/contents/..%2F{second}/xailab", token=tokens[first],
                         ok=None)
    assert code in (400, 403, 404), f"{first}'s server listed {second}'s home (HTTP {code})"
    _, mine = await _api(client, "GET", f"{url}/user/{first}/api/contents/xailab/labs", token=tokens[first])
    await _api(client, "PUT", f"{url}/user/{first}/api/contents/xailab/labs/only-{first}.txt", token=tokens[first],
               body={"type": "file", "format": "text", "content": "mine"})
    _, theirs = await _api(client, "GET", f"{url}/user/{second}/api/contents/xailab/labs", token=tokens[second])
    assert f"only-{first}.txt" not in {f["name"] for f in theirs["content"]}


def _memory(hub_pid):
    """Resident (RSS) and unique (USS) memory in MB of each student's server plus kernels."""
    usage = {}
    for proc in psutil.Process(hub_pid).children(recursive=True):
        try:
            user = proc.environ().get("JUPYTERHUB_USER")
            if not user or proc.parent().environ().get("JUPYTERHUB_USER") == user:
                continue                                  # count each server's tree once, from its top
            tree = [proc] + proc.children(recursive=True)
            info = [p.memory_full_info() for p in tree]
            usage[user] = {"rss": sum(i.rss for i in info) / 2**20, "uss": sum(i.uss for i in info) / 2**20,
                           "server_rss": info[0].rss / 2**20, "processes": len(tree)}
        except psutil.Error:
            continue
    return usage


async def _class(hub):
    from tornado.httpclient import AsyncHTTPClient

    client = AsyncHTTPClient(max_clients=20)
    url = hub["url"]
    await _wait_for_hub(client, url, hub["proc"], hub["log"])
    started = time.time()
    tokens = dict(zip(STUDENTS, await asyncio.gather(*(_log_in_and_start(client, url, s) for s in STUDENTS))))
    print(f"\nthree servers started in {time.time() - started:.1f} s")
    runs = await asyncio.gather(*(_execute_solution(client, url, s, tokens[s]) for s in STUDENTS))
    await _isolation(client, url, tokens)
    return tokens, dict(zip(STUDENTS, runs))


def test_three_students_work_at_once_on_jupyterhub(hub):
    tokens, runs = asyncio.run(asyncio.wait_for(_class(hub), TIME_LIMIT))
    memory = _memory(hub["proc"].pid)
    for name in STUDENTS:
        run, mem = runs[name], memory.get(name)
        assert run["outputs"] > 0
        assert mem is not None and mem["processes"] >= 2, f"no server + kernel found for {name}: {memory}"
        print(f"{name}: lab 02 solution ran in {run['seconds']:.1f} s ({run['outputs']} outputs); server + kernel "
              f"RSS {mem['rss']:.0f} MB (server {mem['server_rss']:.0f} MB), USS {mem['uss']:.0f} MB "
              f"({mem['processes']} processes)")
        copy = hub["home"] / name / COPY
        assert copy.exists(), f"{name}'s copy is not in their home"
    homes = sorted(p.name for p in hub["home"].iterdir())
    assert homes == STUDENTS
