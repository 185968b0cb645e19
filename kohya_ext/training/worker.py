"""Scoring in a separate, killable process with a deadline.

A native crash (the nvxs C library is called through ctypes), a CUDA error or a hang in
the scorer must not take training down: the worker is a spawned process, the trainer
waits on a pipe for at most ``deadline`` seconds, kills the worker past it, and starts a
new one at the next evaluation. A thread with a timeout could not be stopped.
This module is the process and its pipe; what the child does with a job is
``evaluation`` (scoring, files) and ``devices`` (GPU or CPU).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
from typing import Any

from ..errors import KohyaExtError
from .devices import evaluate_on_device, is_cuda_error, release
from .evaluation import build_scorer

# -- child side ---------------------------------------------------------------------------

def _child(conn: Any, cfg: dict) -> None:
    # The trainer handles Ctrl-C; the worker just dies with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cfg.get("threads"):
        try:
            import torch

            torch.set_num_threads(int(cfg["threads"]))
        except Exception:
            pass
    try:
        scorer = build_scorer(cfg)
        info: dict[str, Any] = {"pid": os.getpid()}
        for name, sc in (scorer.items() if isinstance(scorer, dict) else [(None, scorer)]):
            ref = getattr(sc, "reference", None)
            if ref is None:
                continue
            counts = dict(getattr(ref, "counts", {}) or {})
            if name is None:
                info.update(name=getattr(ref, "name", None), counts=counts)
            else:
                info.setdefault("characters", {})[name] = counts
                total = info.setdefault("counts", {})
                for k, v in counts.items():
                    if isinstance(v, (int, float)):
                        total[k] = total.get(k, 0) + v
        release(scorer)  # models were on the GPU only to build the reference
        conn.send(("ready", info))
    except KohyaExtError as e:
        conn.send(("error", str(e)))
        return
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            conn.send(("result", evaluate_on_device(scorer, job)))
        except BaseException as e:
            tb = traceback.format_exc(limit=4)
            conn.send(("failed", f"{type(e).__name__}: {e}".strip() + "\n" + tb))


# -- parent side --------------------------------------------------------------------------

def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ScoringWorker:
    """One scoring process at a time; ``score`` never raises and never waits past its deadline."""

    def __init__(self, cfg: dict, deadline_s: float):
        self.cfg = dict(cfg)
        self.deadline_s = float(deadline_s)
        self._ctx = mp.get_context("spawn")
        self.proc: Any = None
        self.conn: Any = None
        self.info: dict = {}
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def start(self) -> None:
        parent, child = self._ctx.Pipe()
        self.proc = self._ctx.Process(target=_child, args=(child, self.cfg), name="kohya-ext-scorer", daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def _receive(self, timeout: float, deadline: float | None = None) -> tuple[str, Any]:
        """("kind", payload) from the worker; ("dead", why) or ("timeout", why) otherwise."""
        deadline = timeout if deadline is None else deadline
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                self.kill()
                return "timeout", f"scoring worker passed its {deadline:g} s deadline and was killed"
            try:
                if self.conn.poll(min(left, 0.2)):
                    return self.conn.recv()
            except (EOFError, OSError):
                pass
            else:
                if self.proc.is_alive():
                    continue
                if self.conn.poll(0):  # it answered just before exiting
                    try:
                        return self.conn.recv()
                    except (EOFError, OSError):
                        pass
            self.proc.join(1)
            why = f"scoring worker died ({_describe_exit(self.proc.exitcode)})"
            self._drop()
            return "dead", why

    def wait_ready(self, timeout: float) -> dict:
        """Wait for the worker to load its scorer and reference; raise KohyaExtError if it cannot."""
        kind, payload = self._receive(timeout)
        if kind == "ready":
            self.info = payload
            return payload
        self.kill()
        if kind == "error":
            raise KohyaExtError(payload)
        raise KohyaExtError(f"{payload} while loading the scorer and reference")

    def score(self, job: dict, deadline_s: float | None = None) -> dict:
        """{"ok": True, ...result} or {"ok": False, "error": "..."}; restarts a dead worker first."""
        deadline = self.deadline_s if deadline_s is None else deadline_s
        t0 = time.monotonic()
        if not self.alive():
            if self.proc is not None:
                self._drop()
            self.restarts += 1
            self.start()
            try:
                self.wait_ready(deadline)
            except KohyaExtError as e:
                return {"ok": False, "error": f"restarting the scoring worker failed: {e}"}
        try:
            self.conn.send(job)
        except (OSError, BrokenPipeError) as e:
            self.kill()
            return {"ok": False, "error": f"scoring worker unreachable: {e}"}
        kind, payload = self._receive(max(0.1, deadline - (time.monotonic() - t0)), deadline)
        if kind == "result":
            return {"ok": True, **payload}
        if kind == "failed":
            if is_cuda_error(payload):
                self.kill()  # its CUDA context is broken: the next evaluation starts a fresh worker
                payload = payload.splitlines()[0] + " (CUDA error: scoring worker replaced)\n" + "\n".join(payload.splitlines()[1:])
            return {"ok": False, "error": payload.splitlines()[0], "traceback": payload}
        return {"ok": False, "error": payload}

    def kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self._drop()

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
        self.conn = None
        if self.proc is not None and not self.proc.is_alive():
            self.proc = None

    def close(self) -> None:
        if self.alive():
            try:
                self.conn.send(None)
                self.proc.join(2)
            except (OSError, BrokenPipeError):
                pass
        self.kill()
