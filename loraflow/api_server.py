"""The Prefect API server a ``loraflow run`` talks to, started in a session of its own.

Prefect starts its embedded ("ephemeral") API server as a plain child process, in the caller's process group. A
signal sent to that group (Ctrl-C in a terminal, ``kill -TERM -PGID``, a job supervisor) then stops the server
together with the run: while the run writes its checkpoint and closes its MLflow run, every Prefect call fails,
and it prints tracebacks and waits for retries for minutes instead of exiting 143 / 130.

So :func:`start` runs the same server (Prefect's own ``SubprocessASGIServer``) from a small launcher
(``python -m loraflow.api_server PORT``) in a new session, where group signals do not reach it, and points
``PREFECT_API_URL`` at it before Prefect is imported. The launcher stops the server when the run closes its
stdin (at exit) or when the run's process is gone (SIGKILL, OOM), so nothing outlives the run.

A ``PREFECT_API_URL`` set by the user wins: nothing is started then (nor with ``LORAFLOW_DETACHED_API=0``).
"""

import atexit
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time

READY = "loraflow-api-ready "
#: ``LORAFLOW_DETACHED_API=0``: let Prefect start its embedded server itself, in the run's process group.
OPT_OUT = "LORAFLOW_DETACHED_API"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DetachedApi:
    """A launcher process (own session) serving the Prefect API on ``url``; :meth:`stop` ends both."""

    def __init__(self, proc: subprocess.Popen, url: str) -> None:
        self.proc, self.url, self.ready = proc, url, False

    def wait_ready(self) -> None:
        """Block until the server answers; raise :class:`~tasks.core.StageError` (one line) if it cannot start.

        No deadline of its own: the launcher gives up after Prefect's own startup limit
        (``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``, counted from the server's spawn, as before) and
        exits; on a loaded machine importing Prefect alone can take minutes before that.
        """
        from tasks.core import StageError

        line = ""
        while not self.ready and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 1.0)[0]:
                line = self.proc.stdout.readline()
                self.ready = line.startswith(READY)
                if not line:
                    time.sleep(0.1)  # EOF: the launcher is exiting
        if not self.ready:
            why = f"its launcher exited with code {self.proc.wait()}"
            self.stop()
            raise StageError(f"the Prefect API server for this run did not start ({why}; see the lines above).")
        if line.strip().removeprefix(READY.strip()).strip() != self.url:
            self.stop()
            raise StageError(f"the Prefect API server started elsewhere than {self.url} (port taken); run again.")

    def stop(self, timeout: float = 15) -> None:
        """Close the launcher's stdin (it stops the server) and wait; after ``timeout`` s kill its whole group
        (the launcher leads it, the server is in it)."""
        if os.environ.get("PREFECT_API_URL") == self.url:
            del os.environ["PREFECT_API_URL"]  # child processes started later must not look for it
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start() -> DetachedApi | None:
    """Start the run's Prefect API server in its own session; None when ``PREFECT_API_URL`` is already set
    or Prefect is already imported (it then starts its own embedded server, as before).

    Call before Prefect is imported (it reads ``PREFECT_API_URL`` once), then :meth:`DetachedApi.wait_ready`
    before the first flow runs; importing the flow's modules in between overlaps with the server's start.
    """
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules or os.environ.get(OPT_OUT) == "0":
        return None  # the user's server; Prefect already read its settings (an in-process caller); opted out
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loraflow.api_server", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the point: a signal to the run's process group does not reach the server
        env=dict(os.environ),
    )
    api = DetachedApi(proc, f"http://127.0.0.1:{port}/api")
    os.environ["PREFECT_API_URL"] = api.url
    atexit.register(api.stop)
    return api


def _watch_run(parent: int) -> None:
    """Launcher thread: SIGTERM this process once the run is gone or closed our stdin (EOF)."""
    while os.getppid() == parent:
        readable = select.select([sys.stdin], [], [], 0.5)[0]
        if readable and not sys.stdin.read(1):
            break
    os.kill(os.getpid(), signal.SIGTERM)


def _serve(port: int) -> None:
    """The launcher: start Prefect's server on ``port``, report its URL, stop it when the run is gone.

    The watch runs from the first moment (a thread), so a run killed while the server still starts leaves
    nothing behind either.
    """
    import threading

    threading.Thread(target=_watch_run, args=(os.getppid(),), daemon=True).start()
    # Only the ready line goes to the run's pipe; the server (which inherits fd 1) writes to stderr instead,
    # so a chatty server never fills a pipe nobody reads any more.
    ready_fd = os.dup(1)
    os.dup2(2, 1)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer(port)
    try:
        server.start()
        os.write(ready_fd, f"{READY}{server.api_url}\n".encode())
        os.close(ready_fd)
        threading.Event().wait()  # until a signal: the watch's SIGTERM, or anyone's
    finally:
        server.stop()


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _exit_on_signal)
    _serve(int(sys.argv[1]))
