"""Weighted minimax polynomial fit by the Remez exchange, in mpmath (mp.dps = 40).
fit(f, lo, hi, powers, rel=True) -> coefficients c (for x**powers), max weighted error.
The error minimised is max |(p(x) - f(x)) * W(x)| with W = 1/|F(x)| where F=fref (the final
function whose relative error matters) via 'scale' callbacks."""
import mpmath as mp
mp.mp.dps = 40

def remez(f, w, lo, hi, powers, grid=2000, iters=30, verbose=False):
    lo, hi = mp.mpf(lo), mp.mpf(hi)
    n = len(powers)
    # dense grid: Chebyshev-distributed
    xs = [(lo + hi) / 2 - (hi - lo) / 2 * mp.cos(mp.pi * k / (grid - 1)) for k in range(grid)]
    fs = [f(x) for x in xs]
    ws = [w(x) for x in xs]
    # initial reference: Chebyshev extrema
    m = n + 1
    ref = [int(round((grid - 1) * (1 - mp.cos(mp.pi * k / (m - 1))) / 2)) for k in range(m)]
    best = None
    for it in range(iters):
        A = mp.matrix(m, m)
        b = mp.matrix(m, 1)
        for i, k in enumerate(ref):
            for j, p in enumerate(powers):
                A[i, j] = ws[k] * xs[k] ** p
            A[i, n] = (-1) ** i
            b[i] = ws[k] * fs[k]
        sol = mp.lu_solve(A, b)
        c = [sol[j] for j in range(n)]
        E = abs(sol[n])
        err = [ws[k] * (mp.fsum(cj * xs[k] ** p for cj, p in zip(c, powers)) - fs[k])
               for k in range(grid)]
        emax = max(abs(e) for e in err)
        if best is None or emax < best[1]:
            best = (c, emax)
        if verbose: print(it, mp.nstr(E, 5), mp.nstr(emax, 5))
        if emax <= E * (1 + mp.mpf('1e-3')):
            break
        # new reference: local extrema with alternating signs
        ext = []
        k = 0
        while k < grid:
            s = mp.sign(err[k])
            j = k
            best_k = k
            while j < grid and mp.sign(err[j]) == s:
                if abs(err[j]) > abs(err[best_k]): best_k = j
                j += 1
            ext.append(best_k)
            k = j
        # reduce to m points keeping alternation: drop smallest at ends / merge
        while len(ext) > m:
            # remove the smaller of the two ends or the smallest pair
            if abs(err[ext[0]]) < abs(err[ext[-1]]): ext.pop(0)
            else: ext.pop()
        if len(ext) < m:
            break
        ref = ext
    return best

def evalp(c, powers, x):
    return mp.fsum(cj * x ** p for cj, p in zip(c, powers))
