"""Rounds the coefficients to the element type one at a time, lowest degree first; after each
rounding the remaining ones are re-fitted by least squares at 400 Chebyshev nodes (weighted
relative error), mpmath dps 40."""
from fit_all import *
def seqfit(f, w, lo, hi, d, t, N=400):
    lo, hi = mp.mpf(lo), mp.mpf(hi)
    xs = [(lo + hi) / 2 - (hi - lo) / 2 * mp.cos(mp.pi * (k + mp.mpf(1) / 2) / N) for k in range(N)]
    fs = [f(x) for x in xs]; ws = [w(x) for x in xs]
    fixed = []
    for k in range(d + 1):
        A = mp.matrix(N, d + 1 - k); b = mp.matrix(N, 1)
        for i, x in enumerate(xs):
            for j in range(k, d + 1): A[i, j - k] = ws[i] * x ** j
            b[i] = ws[i] * (fs[i] - evalp(fixed, list(range(k)), x))
        sol, res = mp.qr_solve(A, b)
        fixed.append(rnd([sol[0]], t)[0])
    return fixed
def report2(name, t, c, f, w, lo, hi):
    print("/* %s: rounded, re-fitted %s */" % (name, mp.nstr(maxerr(c, list(range(len(c))), f, w, lo, hi), 3)))
    print("{" + fmt(c, t) + "}"); sys.stdout.flush()
which = sys.argv[1:]
for t, a1, d, A in (('f', 2.5, 11, 15), ('d', 3, 22, 40)):
    a1 = mp.mpf(a1); cs = a1 / 2
    if 'M' + t in which:
        c = seqfit(lambda u: M(u + cs), lambda u: 1 / M(u + cs), -cs, cs, d, t)
        report2("%s M(a) on [0,%s] in u = a - %s, deg %d" % (t, a1, cs, d), t, c,
                lambda u: M(u + cs), lambda u: 1 / M(u + cs), -cs, cs)
    if 'F' + t in which:
        w0 = 1 / mp.mpf(A) ** 2; w1 = 1 / a1 ** 2; cl = rnd([(w0 + w1) / 2], t)[0]
        print("/* %s centre of w: %.17e */" % (t, float(cl)))
        c = seqfit(lambda u: F(u + cl), lambda u: 1 / F(u + cl), w0 - cl, w1 - cl, d, t)
        report2("%s F(w) on [1/%d^2, 1/%s^2] in u = w - centre, deg %d" % (t, A, a1, d), t, c,
                lambda u: F(u + cl), lambda u: 1 / F(u + cl), w0 - cl, w1 - cl)
