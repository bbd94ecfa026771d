# Coefficients of src/cbn_math-inl.h: python3 fit_all.py expf expd Mf Md; python3 fit_lsq.py Mf Ff Md
"""Fits every coefficient of src/cbn_math-inl.h (Remez exchange in mpmath, dps 40).
Prints the C initialisers and the max weighted (relative) error before and after rounding the
coefficients to the element type."""
from remez import *
import numpy as np, sys
LN2H = {'f': mp.mpf(float(np.float32(0.693359375))), 'd': mp.mpf(6.93147180369123816490e-01)}
def M(a): return mp.erfc(a / mp.sqrt(2)) * mp.exp(a * a / 2) * mp.sqrt(mp.pi / 2)
def F(w):
    a = 1 / mp.sqrt(w); return a * M(a)
def rnd(c, t):
    return [mp.mpf(float(np.float32(float(x)))) if t == 'f' else mp.mpf(float(x)) for x in c]
def fmt(c, t):
    if t == 'f': return ", ".join("%.9ef" % float(np.float32(float(x))) for x in c)
    return ", ".join("%.17e" % float(x) for x in c)
def maxerr(c, powers, f, w, lo, hi, n=4000):
    lo, hi = mp.mpf(lo), mp.mpf(hi)
    return max(abs(w(x) * (evalp(c, powers, x) - f(x)))
               for x in (lo + (hi - lo) * k / (n - 1) for k in range(n)))
def P_exp(r):
    return mp.mpf(1) / 2 if r == 0 else (mp.expm1(r) - r) / r**2
def report(name, t, c, powers, f, w, lo, hi):
    cr = rnd(c, t)
    print("/* %s: exact %s rounded %s */" % (name, mp.nstr(maxerr(c, powers, f, w, lo, hi), 3),
                                             mp.nstr(maxerr(cr, powers, f, w, lo, hi), 3)))
    print("{" + fmt(c, t) + "}")
    sys.stdout.flush()
which = sys.argv[1:]  # expf expd Mf Md (fit_all.py); Mf Ff Md Fd (fit_lsq.py)
R = mp.mpf('0.3470')
if 'expf' in which:
    c, e = remez(P_exp, lambda r: r * r / mp.exp(r), -R, R, list(range(5)), grid=1000)
    report("exp f32 P deg 4 on [-0.347,0.347], weighted r^2/e^r", 'f', c, list(range(5)),
           P_exp, lambda r: r * r / mp.exp(r), -R, R)
if 'expd' in which:
    c, e = remez(P_exp, lambda r: r * r / mp.exp(r), -R, R, list(range(10)), grid=1000)
    report("exp f64 P deg 9", 'd', c, list(range(10)), P_exp, lambda r: r * r / mp.exp(r), -R, R)
for t, a1, d, A in (('f', 2.5, 11, 15), ('d', 3, 22, 40)):
    if 'M' + t not in which: continue
    a1 = mp.mpf(a1); cs = a1 / 2
    c1, e1 = remez(lambda u: M(u + cs), lambda u: 1 / M(u + cs), -cs, cs, list(range(d + 1)),
                   grid=1000)
    report("M(a) on [0,%s] in u = a - %s, deg %d" % (a1, cs, d), t, c1, list(range(d + 1)),
           lambda u: M(u + cs), lambda u: 1 / M(u + cs), -cs, cs)
    w0 = 1 / mp.mpf(A) ** 2; w1 = 1 / a1 ** 2; cl = (w0 + w1) / 2
    c2, e2 = remez(lambda u: F(u + cl), lambda u: 1 / F(u + cl), w0 - cl, w1 - cl,
                   list(range(d + 1)), grid=1000)
    print("/* centre of w: %.17e */" % float(cl))
    report("F(w) on [1/%d^2, 1/%s^2] in u = w - centre, deg %d" % (A, a1, d), t, c2,
           list(range(d + 1)), lambda u: F(u + cl), lambda u: 1 / F(u + cl), w0 - cl, w1 - cl)
