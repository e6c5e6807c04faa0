"""A private Label Studio server for the tests: its own data folder, a free port on
127.0.0.1, a user and a personal access token made through the web login, as a person would.

The server is the ``label-studio`` executable named by ``$ENTK_AL_LABEL_STUDIO`` (``.ci/run``
installs it in a venv of its own: it pins other numpy/Django versions than entk-al), else the
one on ``PATH``. A first start spends most of its time creating the database (~30 s idle,
minutes on a busy machine); a copy of the fresh database (``template``, kept in pytest's cache
per server install) lets later sessions start in seconds, each with a user of its own.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

#: seconds to wait for a first start (database migrations; ~30 s on an idle machine).
START_TIMEOUT_S = 300


@dataclass
class Server:
    url: str
    token: str = field(repr=False)
    email: str
    password: str = field(repr=False)
    log: Path


def executable() -> str | None:
    """The ``label-studio`` executable to start, or None."""
    named = os.environ.get("ENTK_AL_LABEL_STUDIO", "").strip()
    if named:
        return named if Path(named).is_file() else None
    return shutil.which("label-studio")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def personal_access_token(url: str, email: str, password: str) -> str:
    """Log in through the web form and create a personal access token (JWT refresh token).

    Label Studio 1.23 disables legacy tokens by default; this is the flow its users follow
    (Account & Settings > Personal Access Token), done over HTTP."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as web:
        web.get("/user/login/")
        resp = web.post("/user/login/", data={"email": email, "password": password,
                                             "csrfmiddlewaretoken": web.cookies["csrftoken"]},
                        headers={"Referer": f"{url}/user/login/"})
        assert resp.status_code in (200, 302) and "sessionid" in web.cookies, resp.text[:300]
        resp = web.post("/api/token/", json={}, headers={"X-CSRFToken": web.cookies["csrftoken"],
                                                         "Referer": f"{url}/"})
        assert resp.status_code == 201, resp.text[:300]
        return resp.json()["token"]


def template_key() -> str:
    """Names the database template of this server install (its path and install time)."""
    exe = Path(executable()).resolve()
    return "label-studio-" + hashlib.sha256(f"{exe}:{exe.stat().st_mtime_ns}".encode()).hexdigest()[:16]


def _save_template(data: Path, template: Path) -> None:
    """Copy a fresh data folder to ``template`` (the database through SQLite's online backup)."""
    tmp = template.with_name(f".{template.name}.{secrets.token_hex(4)}")
    shutil.copytree(data, tmp, ignore=shutil.ignore_patterns("*.sqlite3*"))
    with sqlite3.connect(data / "label_studio.sqlite3") as src, sqlite3.connect(tmp / "label_studio.sqlite3") as dst:
        src.backup(dst)
    try:
        tmp.rename(template)
    except OSError:  # another session was first
        shutil.rmtree(tmp, ignore_errors=True)


def start(folder: Path, template: Path | None = None) -> tuple[subprocess.Popen, Server]:
    """Start a server with its data under ``folder``; returns (process, server) once it is up.

    Args:
        folder: an empty folder for the data and the log.
        template: a database template to start from (made here on first use), or None.
    """
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = folder / "data"
    reuse = template is not None and (template / "label_studio.sqlite3").is_file()
    if reuse:
        shutil.copytree(template, data)
    email, password = f"annotator-{secrets.token_hex(4)}@example.com", "entk-al-test-password"
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data), LABEL_STUDIO_USERNAME=email,
               LABEL_STUDIO_PASSWORD=password, LATEST_VERSION_CHECK="false", COLLECT_ANALYTICS="false",
               PYTHONUNBUFFERED="1")
    log = folder / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([executable(), "start", "--no-browser", "--internal-host", "127.0.0.1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=folder, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"label-studio exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("status") == "UP":
                break
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"label-studio did not come up in {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    if template is not None and not reuse:
        _save_template(data, template)
    return proc, Server(url=url, token=personal_access_token(url, email, password), email=email,
                        password=password, log=log)


def stop(proc: subprocess.Popen) -> None:
    """Stop the server and everything it started (its own process group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass
