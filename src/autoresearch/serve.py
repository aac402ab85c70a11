"""`autoresearch serve`: a live dashboard of the research in the browser (FastAPI, one static page).

    autoresearch serve [--port 8765] [--host 127.0.0.1] [--token T] [--tag TAG]

The page (dashboard.html, plain HTML and JS, no build step) polls the JSON endpoints:

    GET  /api/summary                       metric, baseline, best, counts, cost, session state, latest transfer
    GET  /api/experiments?state=&agent=&q=  the table (no diffs); filters combine, q searches text and diffs
    GET  /api/experiments/{id}              one experiment with its diff and runs
    GET  /api/log/{id}?tail=N               the last N lines of its log (live while it runs)
    GET  /api/slots                         what each slot is running, with progress
    POST /api/control/{pause|resume|stop}   the only write: the control file the session polls

Binds 127.0.0.1 by default and then answers only requests addressed to a local name (no DNS
rebinding). Any other address needs a token, checked on every request (`Authorization: Bearer T`
or `?token=T`; the page passes on the one in its own address). A POST must carry the header
`X-Autoresearch: control`, which no cross-site form can send.
"""

from __future__ import annotations

import hmac
import os
from contextlib import contextmanager
from importlib import resources
from typing import Optional

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from . import control, observe
from .target import Target

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
DEFAULT_PORT = 8765
MAX_TAIL = 2000


class ServeError(Exception):
    """The dashboard cannot start as asked; the message says why."""


def check_bind(host: str, token: Optional[str]) -> None:
    if host not in LOCAL_HOSTS and not token:
        raise ServeError(f"binding to {host} would let anyone who can reach this machine read your experiments and "
                         "stop your session: pass --token T (or set AUTORESEARCH_TOKEN), or keep the default "
                         "--host 127.0.0.1")


def _hostname(host_header: str) -> str:
    """The name in a Host header, without its port: `127.0.0.1:8765` -> `127.0.0.1`, `[::1]:80` -> `[::1]`."""
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _json(data, status: int = 200) -> Response:
    return Response(observe.dumps(data), status_code=status, media_type="application/json")


def create_app(target: Target, tag: Optional[str] = None, token: Optional[str] = None) -> FastAPI:
    app = FastAPI(title="autoresearch", docs_url=None, redoc_url=None, openapi_url=None)
    page = (resources.files("autoresearch") / "dashboard.html").read_text()

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token:
            header = request.headers.get("authorization", "")
            supplied = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token", "")
            if not hmac.compare_digest(supplied.encode(), token.encode()):
                return JSONResponse({"error": "a valid token is required (?token=T or Authorization: Bearer T)"},
                                    status_code=401)
        else:
            host = _hostname(request.headers.get("host", ""))
            if host not in LOCAL_HOSTS:
                return JSONResponse({"error": f"this dashboard answers only on a local address, not {host!r}"},
                                    status_code=403)
        if request.method == "POST" and request.headers.get("x-autoresearch") != "control":
            return JSONResponse({"error": "a control request needs the header X-Autoresearch: control"},
                                status_code=403)
        return await call_next(request)

    @contextmanager
    def tagged():
        ledger = observe.open_ledger(target)
        try:
            name = tag or (ledger.latest_tag() if ledger else None)
            if ledger is not None and name is not None and ledger.tag(name) is None:
                raise HTTPException(404, f"no tag {name!r}")
            yield ledger, name
        finally:
            if ledger is not None:
                ledger.close()

    @app.get("/", response_class=HTMLResponse)
    def index():
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/api/summary")
    def summary():
        with tagged() as (ledger, name):
            if name is None:
                return _json({"tag": None, "target": target.config.target.name,
                              "metric": {"name": target.config.metric.name, "goal": target.config.metric.goal}})
            return _json(observe.summary(observe.status(ledger, name, target)))

    @app.get("/api/experiments")
    def experiments(state: str = "", agent: str = "", q: str = ""):
        with tagged() as (ledger, name):
            if name is None:
                return _json({"experiments": []})
            found = ledger.experiments(name)
            rows = {r["id"]: r for r in observe.rows(found, target.config, observe.status(ledger, name, target, found))}
            states = {s for s in state.split(",") if s}
            needle = q.strip().lower()
            chosen = [e for e in found if (not states or e.state.value in states) and (not agent or e.agent == agent)
                      and (not needle or needle in f"{e.description}\n{e.reason}\n{e.diff}".lower())]
            return _json({"experiments": [rows[e.index] for e in chosen],
                          "agents": sorted({e.agent for e in found})})

    @app.get("/api/experiments/{index}")
    def experiment(index: int):
        with tagged() as (ledger, name):
            found = ledger.experiments(name) if name else []
            chosen = next((e for e in found if e.index == index), None)
            if chosen is None:
                raise HTTPException(404, f"no experiment #{index}")
            status = observe.status(ledger, name, target, found)
            row = next(r for r in observe.rows(found, target.config, status, diffs=True) if r["id"] == index)
            return _json(row)

    @app.get("/api/log/{index}")
    def log(index: int, tail: int = 50):
        with tagged() as (ledger, name):
            chosen = next((e for e in (ledger.experiments(name) if name else []) if e.index == index), None)
            if chosen is None:
                raise HTTPException(404, f"no experiment #{index}")
            return _json(observe.log_tail(target, name, chosen, max(0, min(tail, MAX_TAIL))))

    @app.get("/api/slots")
    def slots():
        with tagged() as (ledger, name):
            return _json({"slots": observe.in_flight(target, ledger, name) if name else []})

    @app.post("/api/suggest")
    async def suggest(request: Request):
        text = " ".join(str((await request.json()).get("text", "")).split())
        if not text:
            raise HTTPException(400, "say what to suggest: {\"text\": \"try a cosine schedule\"}")
        with tagged() as (ledger, name):
            if ledger is None:
                raise HTTPException(409, "no research yet: `autoresearch run` starts a tag")
            suggestion = ledger.add_suggestion(text, name, source="dashboard")
        return _json({"id": suggestion.id, "text": text, "tag": name})

    @app.post("/api/control/{command}")
    def command(command: str):
        if command not in control.COMMANDS:
            raise HTTPException(404, f"unknown command {command!r}; expected one of {', '.join(control.COMMANDS)}")
        written = control.write(target.state, command, by="dashboard")
        with tagged() as (ledger, name):
            session = observe.session_state(ledger, name, target.state) if name else None
        return _json({**written, "session": session})

    return app


def serve(target: Target, host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: Optional[str] = None,
          tag: Optional[str] = None) -> None:
    """Run the dashboard until Ctrl-C."""
    import uvicorn

    token = token or os.environ.get("AUTORESEARCH_TOKEN") or None
    check_bind(host, token)
    app = create_app(target, tag, token)
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    print(f"autoresearch dashboard for {target.root}: http://{shown}:{port}/"
          + ("?token=<your token>" if token else ""), flush=True)
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning")
