"""Exact Hamming top-k on packed bits with a small C kernel compiled on first use.

Why: neither torch nor numpy has a vectorised popcount-and-select, and a byte lookup table in torch is *slower* than
float32 search. This ~100-line kernel (AVX-512 ``VPOPCNTQ`` where the CPU has it, via ``-march=native``) scans a
bit-plane layout block by block, keeps a per-query candidate buffer behind a tightening distance threshold and
selects the exact top k with a counting sort, so the result is identical to a full sort by (distance, index).

The library is built with the system C compiler into ``<cache>/kernels/`` (the name hashes the source, the flags and
the CPU's feature flags, so a shared cache across machines stays correct). Without a compiler :func:`load` returns
``None`` and callers use the torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Keep the k smallest distances of the buffer (ties: earliest position, i.e. lowest corpus index). */
static int64_t compact(int64_t *ci, int32_t *cd, int64_t cnt, int64_t k, int64_t *hist, int64_t bits, int32_t *thr_out) {
    memset(hist, 0, sizeof(int64_t) * (bits + 2));
    for (int64_t r = 0; r < cnt; r++) hist[cd[r]]++;
    int64_t s = 0; int32_t thr = 0;
    for (int64_t v = 0; v <= bits; v++) { s += hist[v]; if (s >= k) { thr = (int32_t)v; break; } }
    int64_t need_eq = k - (s - hist[thr]), eq = 0, m = 0;
    for (int64_t r = 0; r < cnt; r++) {
        int32_t d = cd[r];
        if (d < thr || (d == thr && eq < need_eq)) { if (d == thr) eq++; ci[m] = ci[r]; cd[m] = d; m++; }
    }
    *thr_out = thr;
    return m;
}

static inline void score6(const uint64_t *qq, const uint64_t *c, int64_t N, int64_t nb, uint32_t *restrict acc) {
    const uint64_t q0 = qq[0], q1 = qq[1], q2 = qq[2], q3 = qq[3], q4 = qq[4], q5 = qq[5];
    const uint64_t *restrict c0 = c, *restrict c1 = c + N, *restrict c2 = c + 2 * N;
    const uint64_t *restrict c3 = c + 3 * N, *restrict c4 = c + 4 * N, *restrict c5 = c + 5 * N;
    for (int64_t j = 0; j < nb; j++)
        acc[j] = (uint32_t)(__builtin_popcountll(q0 ^ c0[j]) + __builtin_popcountll(q1 ^ c1[j])
               + __builtin_popcountll(q2 ^ c2[j]) + __builtin_popcountll(q3 ^ c3[j])
               + __builtin_popcountll(q4 ^ c4[j]) + __builtin_popcountll(q5 ^ c5[j]));
}

static inline void score_any(const uint64_t *qq, const uint64_t *c, int64_t N, int64_t W, int64_t nb, uint32_t *restrict acc) {
    uint64_t w0 = qq[0];
    for (int64_t j = 0; j < nb; j++) acc[j] = (uint32_t)__builtin_popcountll(w0 ^ c[j]);
    for (int64_t w = 1; w < W; w++) {
        const uint64_t *cw = c + w * N; uint64_t qw = qq[w];
        for (int64_t j = 0; j < nb; j++) acc[j] += (uint32_t)__builtin_popcountll(qw ^ cw[j]);
    }
}

#define GROUP 16
/* q: Q x W words (row-major); planes: W x N words (plane w holds word w of every document).
   out_i / out_d: Q x k, sorted by (distance, index); -1 / bits+1 pad when N < k. */
int st_hamming_topk(const uint64_t *q, int64_t Q, const uint64_t *planes, int64_t N, int64_t W, int64_t k,
                    int64_t block, int64_t *out_i, int32_t *out_d, int nthreads) {
    int64_t bits = W * 64, cap = 4 * k + block;
    int64_t ngroups = (Q + GROUP - 1) / GROUP;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    {
        int64_t *ci = malloc(sizeof(int64_t) * cap * GROUP);
        int32_t *cd = malloc(sizeof(int32_t) * cap * GROUP);
        uint32_t *acc = malloc(sizeof(uint32_t) * block);
        int64_t *hist = malloc(sizeof(int64_t) * (bits + 2));
        int64_t cnt[GROUP]; int32_t limit[GROUP];
        if (!ci || !cd || !acc || !hist) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (int64_t g = 0; g < ngroups; g++) {
            if (failed) continue;
            int64_t q0 = g * GROUP, nq = (Q - q0 < GROUP) ? Q - q0 : GROUP;
            for (int64_t a = 0; a < nq; a++) { cnt[a] = 0; limit[a] = (int32_t)bits + 1; }
            for (int64_t b0 = 0; b0 < N; b0 += block) {
                int64_t nb = (N - b0 < block) ? N - b0 : block;
                for (int64_t a = 0; a < nq; a++) {
                    int64_t *qci = ci + a * cap; int32_t *qcd = cd + a * cap;
                    const uint64_t *qq = q + (q0 + a) * W;
                    if (cnt[a] + nb > cap) { int32_t t; cnt[a] = compact(qci, qcd, cnt[a], k, hist, bits, &t); limit[a] = t; }
                    if (W == 6) score6(qq, planes + b0, N, nb, acc); else score_any(qq, planes + b0, N, W, nb, acc);
                    int64_t c = cnt[a]; int32_t lim = limit[a];
                    uint32_t mn = 0xFFFFFFFFu;
                    for (int64_t j = 0; j < nb; j++) mn = acc[j] < mn ? acc[j] : mn;
                    if ((int32_t)mn < lim)
                        for (int64_t j = 0; j < nb; j++)
                            if ((int32_t)acc[j] < lim) { qci[c] = b0 + j; qcd[c] = (int32_t)acc[j]; c++; }
                    cnt[a] = c;
                }
            }
            for (int64_t a = 0; a < nq; a++) {
                int64_t *qci = ci + a * cap; int32_t *qcd = cd + a * cap; int64_t qi = q0 + a;
                int64_t c = cnt[a];
                if (c > k) { int32_t t; c = compact(qci, qcd, c, k, hist, bits, &t); }
                memset(hist, 0, sizeof(int64_t) * (bits + 2));
                for (int64_t r = 0; r < c; r++) hist[qcd[r]]++;
                int64_t pos = 0;
                for (int64_t v = 0; v <= bits; v++) { int64_t h = hist[v]; hist[v] = pos; pos += h; }
                for (int64_t r = 0; r < c; r++) { int64_t p = hist[qcd[r]]++; out_i[qi * k + p] = qci[r]; out_d[qi * k + p] = qcd[r]; }
                for (int64_t r = c; r < k; r++) { out_i[qi * k + r] = -1; out_d[qi * k + r] = (int32_t)bits + 1; }
            }
        }
        free(ci); free(cd); free(acc); free(hist);
    }
    return failed;
}
"""

_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"],
    ["-O3", "-shared", "-fPIC"],
)
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


def _cpu_fingerprint() -> str:
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    flags = line
                    break
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}|{flags}"


def available_cpus() -> int:
    """CPUs this process may run on (affinity-aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build(target_dir: Path) -> ctypes.CDLL | None:
    cc = _compiler()
    if cc is None:
        logger.info("no C compiler found: binary search uses the torch kernel")
        return None
    target_dir.mkdir(parents=True, exist_ok=True)
    for flags in _FLAG_SETS:
        tag = hashlib.sha256("\0".join([_SOURCE, cc, *flags, _cpu_fingerprint()]).encode()).hexdigest()[:16]
        so = target_dir / f"st_hamming-{tag}.so"
        if not so.is_file():
            with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
                src = Path(tmp) / "st_hamming.c"
                src.write_text(_SOURCE, encoding="utf-8")
                out = Path(tmp) / so.name
                proc = subprocess.run(
                    [cc, *flags, str(src), "-o", str(out)], capture_output=True, text=True, timeout=120
                )
                if proc.returncode != 0:
                    logger.debug("compiling the Hamming kernel with %s failed: %s", flags, proc.stderr[-500:])
                    continue
                os.replace(out, so)
        try:
            lib = ctypes.CDLL(str(so))
        except OSError as e:  # e.g. an OpenMP runtime missing at load time
            logger.debug("loading %s failed: %s", so, e)
            continue
        fn = lib.st_hamming_topk
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        fn.argtypes = [p, i64, p, i64, i64, i64, i64, p, p, ctypes.c_int]
        fn.restype = ctypes.c_int
        return lib
    logger.info("the native Hamming kernel could not be built: binary search uses the torch kernel")
    return None


def load(cache_dir: str | Path) -> ctypes.CDLL | None:
    """The compiled kernel (built once per cache directory and process), or ``None`` when it cannot be built."""
    key = str(Path(cache_dir).resolve())
    with _lock:
        if key not in _loaded:
            _loaded[key] = _build(Path(cache_dir) / "kernels")
        return _loaded[key]


def to_planes(packed: np.ndarray) -> np.ndarray:
    """``(N, bytes)`` packed bits -> ``(words, N)`` uint64 bit planes (zero-padded to whole 64-bit words).

    The same padding is applied to queries by :func:`to_words`, so padded bits never add distance.
    """
    words = to_words(packed)
    return np.ascontiguousarray(words.T)


def to_words(packed: np.ndarray) -> np.ndarray:
    """``(N, bytes)`` uint8 -> ``(N, words)`` uint64, zero-padded."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    n, nbytes = packed.shape
    pad = (-nbytes) % 8
    if pad:
        packed = np.concatenate([packed, np.zeros((n, pad), dtype=np.uint8)], axis=1)
    return np.ascontiguousarray(packed).view(np.uint64).reshape(n, -1)


def topk(
    lib: ctypes.CDLL,
    queries_packed: np.ndarray,
    planes: np.ndarray,
    k: int,
    *,
    threads: int | None = None,
    block: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` smallest Hamming distances: ``(indices (Q, k) int64, distances (Q, k) int32)``.

    Ties break by lower corpus index. Rows are padded with index -1 when the corpus has fewer than ``k`` rows.
    """
    q = to_words(queries_packed)
    planes = np.ascontiguousarray(planes, dtype=np.uint64)
    n_words, n = planes.shape
    if q.shape[1] != n_words:
        raise ValueError(f"query codes have {q.shape[1]} words, corpus codes {n_words}")
    n_q = q.shape[0]
    out_i = np.empty((n_q, k), dtype=np.int64)
    out_d = np.empty((n_q, k), dtype=np.int32)
    if n_q == 0 or k == 0:
        return out_i, out_d
    threads = threads or available_cpus()
    rc = lib.st_hamming_topk(
        q.ctypes.data,
        n_q,
        planes.ctypes.data,
        n,
        n_words,
        k,
        block,
        out_i.ctypes.data,
        out_d.ctypes.data,
        threads,
    )
    if rc != 0:
        raise MemoryError("the native Hamming kernel could not allocate its buffers")
    return out_i, out_d
