"""Launching the training processes: the torchrun command from config, and a process group that never leaks.

:func:`build_command` turns ``training.launch`` into either one plain process (``nproc_per_node == 1`` and one node)
or ``python -m torch.distributed.run ... -m st_workflow.training.worker --job-file FILE`` with the multi-node
options passed through (``--nnodes``, ``--node-rank``, ``--rdzv-*``, ``--max-restarts``, verbatim extras). The
worker's only flag, ``--job-file``, is not a prefix of any torchrun option (platform notes §9.7).

:func:`run_process_group` runs it in a new session it owns, streams every output line to a sink (rank 0's progress
lines instead become a ``training`` stage of the caller, :mod:`st_workflow.progress_pipe`), and on
cancellation (``should_cancel``), timeout, SIGTERM/SIGINT to the caller, ``KeyboardInterrupt`` or any error
terminates the whole tree: SIGTERM to the group and to every descendant (torchrun starts its workers in sessions
of their own), then SIGKILL after a grace period. If the caller itself is SIGKILLed, the kernel kills the launched
process (``PR_SET_PDEATHSIG`` via :mod:`st_workflow.training._pdeathsig`) and each worker dies with its torchrun
agent the same way, so no process outlives a dead caller.
"""

from __future__ import annotations

import atexit
import contextlib
import fnmatch
import os
import queue
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from st_workflow.config.training import LaunchConfig
from st_workflow.progress_pipe import Relay

WORKER_MODULE = "st_workflow.training.worker"
_ACTIVE: set = set()
_SPLIT = re.compile(rb"[\r\n]+")


class TrainingCancelled(RuntimeError):
    """The training process group was stopped on request (cancel flag or signal)."""


class TrainingTimeout(TrainingCancelled):
    """The training process group ran past ``training.launch.timeout_s`` and was stopped."""


class TrainingFailed(RuntimeError):
    """The training process exited with a non-zero status; the message carries the tail of its output."""

    def __init__(self, returncode: int, tail: list[str]) -> None:
        self.returncode = returncode
        self.tail = tail
        super().__init__(f"training exited with status {returncode}; last output:\n" + "\n".join(tail[-40:]))


class _Signalled(BaseException):
    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"signal {signum}")


# ---------------------------------------------------------------------------------------------- command
def is_distributed(launch: LaunchConfig) -> bool:
    """True when torchrun is needed (several processes or nodes)."""
    return launch.nproc_per_node > 1 or str(launch.nnodes) != "1"


def build_command(
    launch: LaunchConfig, job_file: str | Path, *, run_name: str = "st-workflow", python: str = sys.executable
) -> list[str]:
    """The argv that starts training for ``job_file``.

    Example:
        >>> cmd = build_command(LaunchConfig(nproc_per_node=2), "job.json", python="python")
        >>> cmd[:3], cmd[-4:]
        (['python', '-m', 'torch.distributed.run'], ['-m', 'st_workflow.training.worker', '--job-file', 'job.json'])
    """
    worker = ["-m", WORKER_MODULE, "--job-file", str(job_file)]
    if not is_distributed(launch):
        return [python, *worker]
    cmd = [python, "-m", "torch.distributed.run", f"--nproc-per-node={launch.nproc_per_node}"]
    multi_node = str(launch.nnodes) != "1" or launch.rdzv_endpoint is not None
    if multi_node:
        cmd += [f"--nnodes={launch.nnodes}", f"--rdzv-backend={launch.rdzv_backend}"]
        if launch.rdzv_endpoint:
            cmd.append(f"--rdzv-endpoint={launch.rdzv_endpoint}")
        cmd.append(f"--rdzv-id={launch.rdzv_id or run_name}")
        if launch.node_rank is not None:
            cmd.append(f"--node-rank={launch.node_rank}")
    elif launch.master_port:
        cmd += ["--nnodes=1", f"--master-addr={launch.master_addr}", f"--master-port={launch.master_port}"]
    else:
        cmd.append("--standalone")
    cmd.append(f"--max-restarts={launch.max_restarts}")
    cmd += list(launch.extra_args)
    return cmd + worker


# What training needs from the caller's environment; everything else (OPENAI_API_KEY, EARTHDATA_TOKEN, Prefect
# and cloud credentials...) stays out of the ranks. torchrun sets MASTER_*, RANK, WORLD_SIZE... itself.
ENV_ALLOW = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TMPDIR",
    "TEMP",
    "TMP",
    "TZ",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "PYTHON*",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "CUDA*",
    "NVIDIA_*",
    "NCCL*",
    "GLOO*",
    "TORCH*",
    "PYTORCH*",
    "TRITON*",
    "OMP_*",
    "MKL*",
    "KMP_*",
    "OPENBLAS*",
    "HF_*",
    "HUGGINGFACE_*",
    "TRANSFORMERS_*",
    "SENTENCE_TRANSFORMERS_*",
    "TOKENIZERS_PARALLELISM",
    "DISABLE_MLFLOW_INTEGRATION",
    "WANDB_*",
    "ST_WORKFLOW_*",
    "COVERAGE_*",
    # Downloads (Hub, W&B uploads) behind a proxy or a private CA.
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)


def env_allowed(name: str, extra: Sequence[str] = ()) -> bool:
    """True when the variable ``name`` may reach the training processes (:data:`ENV_ALLOW` plus ``extra``).

    Example:
        >>> env_allowed("CUDA_VISIBLE_DEVICES"), env_allowed("OPENAI_API_KEY"), env_allowed("AWS_REGION", ["AWS_*"])
        (True, False, True)
    """
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in (*ENV_ALLOW, *extra))


def launch_env(
    launch: LaunchConfig, extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment of the launched processes: the allowed part of ``base`` (default ``os.environ``), threads per
    process, unbuffered output, plus ``extra``.

    Only :data:`ENV_ALLOW` and ``launch.env_passthrough`` pass, so the API keys and tokens of the ingest and LLM
    stages never reach a torchrun rank (which may run user code such as a custom loss, or dump its environment in
    a crash report). A W&B service started by the caller (``WANDB_SERVICE``) is not inherited: the training process
    group owns its own service, so a killed run never leaves its run id registered in a service that outlives it
    (a resumed run with that id would be refused as "in use"). Nor is ``WANDB_API_KEY``: an online run gets the
    resolved key in ``extra``.
    """
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if env_allowed(k, launch.env_passthrough)}
    env.pop("WANDB_SERVICE", None)
    # The W&B key arrives in ``extra`` when the run is online (the resolved secret); offline or disabled it is moot.
    env.pop("WANDB_API_KEY", None)
    threads = launch.omp_num_threads or max(1, (os.cpu_count() or 1) // launch.nproc_per_node)
    env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------- processes
def _proc_table() -> dict[int, tuple[int, str]]:
    """``{pid: (ppid, state)}`` from ``/proc`` (empty where there is no procfs)."""
    table: dict[int, tuple[int, str]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            rest = data[data.rfind(b")") + 2 :].split()
            table[int(name)] = (int(rest[1]), rest[0].decode())
    return table


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (children, grandchildren...)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for p, (pp, _) in table.items():
        children.setdefault(pp, []).append(p)
    out: set[int] = set()
    stack = [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in out:
                out.add(c)
                stack.append(c)
    return out


def alive(pids: set[int]) -> set[int]:
    """The pids that still run (zombies count as gone)."""
    table = _proc_table()
    if not table:
        out = set()
        for p in pids:
            with contextlib.suppress(OSError):
                os.kill(p, 0)
                out.add(p)
        return out
    return {p for p in pids if p in table and table[p][1] != "Z"}


def _signal_all(proc_pid: int, pids: set[int], sig: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc_pid, sig)
    for p in pids:
        with contextlib.suppress(OSError):
            os.kill(p, sig)


def kill_process_tree(proc, grace_s: float = 10.0) -> None:
    """SIGTERM the process, its group and all descendants; SIGKILL whatever is left after ``grace_s``."""
    if proc.poll() is not None and not alive(descendants(proc.pid)):
        return
    pids = descendants(proc.pid) | {proc.pid}
    _signal_all(proc.pid, pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            proc.wait(timeout=0.1)
        pids |= descendants(proc.pid) if proc.poll() is None else set()
        if not alive(pids):
            break
    left = alive(pids | ({proc.pid} if proc.poll() is None else set()))
    if left:
        _signal_all(proc.pid, left, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - interpreter shutdown
    for proc in list(_ACTIVE):
        kill_process_tree(proc, grace_s=2.0)


@contextlib.contextmanager
def _trap_signals() -> Iterator[None]:
    """In the main thread, turn SIGTERM/SIGINT into an exception so the group can be stopped first.

    Only signals whose disposition would kill the process outright (``SIG_DFL``) are trapped. A Python
    handler that is already installed is left alone: it raises in this thread (Prefect's SIGTERM bridge raises
    ``TerminationSignal``, Python's SIGINT handler ``KeyboardInterrupt``) and the ``except BaseException`` path stops
    the group just the same. Replacing Prefect's bridge would break its cancellation handshake: the runner only
    treats a SIGTERM as a cancellation when the bridge is the installed handler, otherwise the run ends Crashed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum: int, frame: object) -> None:
        raise _Signalled(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in previous.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, h)


def _stopped(exc: BaseException) -> str:
    """Why a progress bar stopped, in its description."""
    if isinstance(exc, TrainingTimeout):
        return "timed out"
    if isinstance(exc, TrainingCancelled):
        return "cancelled"
    return f"stopped: {type(exc).__name__}"


def _reader(stream, q: queue.Queue) -> None:
    buf = b""
    for chunk in iter(lambda: stream.read1(65536), b""):
        buf += chunk
        parts = _SPLIT.split(buf)
        buf = parts.pop()
        for p in parts:
            if p.strip():
                q.put(p.decode("utf-8", "replace").rstrip())
    if buf.strip():
        q.put(buf.decode("utf-8", "replace").rstrip())
    q.put(None)


def run_process_group(
    cmd: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    log_sink: Callable[[str], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    timeout_s: float | None = None,
    kill_grace_s: float = 10.0,
    poll_s: float = 0.2,
    tail_lines: int = 200,
) -> tuple[int, list[str]]:
    """Run ``cmd`` in a new session, stream its lines, stop the whole tree on cancel/timeout/signal/error.

    Returns ``(returncode, last output lines)``.

    Raises:
        TrainingCancelled: ``should_cancel()`` turned true or the caller got SIGTERM/SIGINT (the signal is passed
            on to the caller's previous handler after the group is gone).
        TrainingTimeout: ``timeout_s`` elapsed.
    """
    import subprocess

    shim = [sys.executable, "-m", "st_workflow.training._pdeathsig", "--parent", str(os.getpid()), "--"]
    proc = subprocess.Popen(
        shim + list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(env) if env is not None else None,
        cwd=str(cwd) if cwd else None,
    )
    _ACTIVE.add(proc)
    q: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True, name="train-log-reader")
    reader.start()
    tail: deque[str] = deque(maxlen=tail_lines)
    # Rank 0's progress lines become stages of this process (the Prefect artifact, the terminal bar).
    relay = Relay()
    deadline = time.monotonic() + timeout_s if timeout_s else None
    done_reading = False

    def drain(block: float) -> None:
        nonlocal done_reading
        try:
            item = q.get(timeout=block) if block else q.get_nowait()
            while True:
                if item is None:
                    done_reading = True
                elif relay.feed(item):
                    pass
                else:
                    tail.append(item)
                    if log_sink is not None:
                        log_sink(item)
                item = q.get_nowait()
        except queue.Empty:
            pass

    signalled: int | None = None
    try:
        with _trap_signals():
            try:
                while True:
                    drain(poll_s)
                    if proc.poll() is not None:
                        end = time.monotonic() + 5
                        while not done_reading and time.monotonic() < end:
                            drain(0.1)
                        # torchrun may exit before a killed worker is reaped: leave nothing behind.
                        if alive(descendants(proc.pid)):
                            kill_process_tree(proc, kill_grace_s)
                        if proc.returncode == 0:
                            relay.finish_open()
                        else:
                            relay.fail_open(f"exit status {proc.returncode}")
                        return proc.returncode, list(tail)
                    if should_cancel is not None and should_cancel():
                        raise TrainingCancelled("training cancelled; process group stopped")
                    if deadline is not None and time.monotonic() > deadline:
                        raise TrainingTimeout(f"training ran past {timeout_s:.0f} s; process group stopped")
            except _Signalled as s:
                signalled = s.signum
                raise TrainingCancelled(f"caller received signal {s.signum}; process group stopped") from None
            except BaseException as exc:
                kill_process_tree(proc, kill_grace_s)
                relay.fail_open(_stopped(exc))
                raise
    except TrainingCancelled as exc:
        kill_process_tree(proc, kill_grace_s)
        drain(0)
        relay.fail_open(_stopped(exc))
        if signalled is not None:
            # Hand the signal to whatever the caller had installed (Prefect, the default action...).
            os.kill(os.getpid(), signalled)
        raise
    finally:
        _ACTIVE.discard(proc)
        # Closing the pipe while the reader thread sits in ``read1`` blocks on the buffer's lock until EOF; a
        # process that escaped the group (and holds the pipe) would hang the caller here. Close only once the
        # reader has seen EOF; otherwise leave the daemon thread and its pipe to the interpreter.
        reader.join(timeout=5)
        if not reader.is_alive():
            with contextlib.suppress(Exception):
                proc.stdout.close()
