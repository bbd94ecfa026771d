"""Max ulp error of cbn_vexp / cbn_vnormal (Phi and phi) per type and SIMD level.
float: reference in float64 (numpy exp, scipy ndtr; errors < 2^-28 float ulp), checked against
mpmath on a sample; double: mpmath (dps 40) as a double and the rest in its ulps.
Usage: python3 tools/vecmath/drive.py [levels base,avx2,avx512] [types f,d] [N for double]
Builds harness.c at each level into $VECMATH_LIB (default /tmp/vecmath) first."""
import ctypes, os, subprocess, sys, numpy as np, mpmath as mp, scipy.special as sp
from multiprocessing import Pool
mp.mp.dps = 40
HERE = os.path.dirname(os.path.abspath(__file__))
LIB = os.environ.get('VECMATH_LIB', '/tmp/vecmath')
FLAGS = {'base': [], 'avx2': ['-march=x86-64-v3'],
         'avx512': ['-march=x86-64-v4', '-mprefer-vector-width=512']}
LEVELS = sys.argv[1].split(',') if len(sys.argv) > 1 else ['base', 'avx2', 'avx512']
WHAT = sys.argv[2].split(',') if len(sys.argv) > 2 else ['f', 'd']
os.makedirs(LIB, exist_ok=True)
for l in LEVELS:
    subprocess.check_call(['gcc', '-O2', '-std=gnu11', '-Wall', '-Wextra', '-Werror',
        '-ffp-contract=fast', '-fno-math-errno', '-fno-trapping-math', '-fPIC', '-shared',
        '-I' + os.path.join(HERE, '..', '..', 'src'), *FLAGS[l], os.path.join(HERE, 'harness.c'),
        '-o', os.path.join(LIB, 'lib_%s.so' % l)])
libs = {l: ctypes.CDLL(os.path.join(LIB, 'lib_%s.so' % l)) for l in LEVELS}
def run(lib, t, op, x):
    x = np.ascontiguousarray(x, dtype=t); y = np.empty_like(x)
    f = lib.run_f32 if t == np.float32 else lib.run_f64
    f(ctypes.c_int(op), x.ctypes.data_as(ctypes.c_void_p), y.ctypes.data_as(ctypes.c_void_p),
      ctypes.c_long(x.size))
    return y
def ulp_of(ref, t):
    fi = np.finfo(t); r = np.abs(ref)
    e = np.floor(np.log2(np.maximum(r, fi.tiny)))
    return np.exp2(np.maximum(e, np.log2(fi.tiny)) - (fi.nmant))
def err_f(y, ref):  # ref float64
    ok = np.isfinite(ref) & (np.abs(ref) <= np.finfo(np.float32).max)
    e = np.where(ok, np.abs(y.astype(np.float64) - ref) / ulp_of(ref, np.float32), 0)
    bad = ~ok & ~((y == np.float32(ref)) | (np.isnan(y) & np.isnan(ref)))
    return e, bad
def err_d(y, hi, lo):
    ok = np.isfinite(hi)
    e = np.where(ok, np.abs((y - hi) / ulp_of(hi, np.float64) - lo), 0)
    bad = ~ok & ~((y == hi) | (np.isnan(y) & np.isnan(hi)))
    return e, bad
def normal_only(e, ref, t):  # restrict to normal results
    return np.where(np.abs(ref) >= np.finfo(t).tiny, e, 0)
def rep(name, e, bad, x, en=None):
    i = int(np.argmax(e)); s = "%-22s max %.3f ulp at x=%r" % (name, e[i], float(x[i]))
    if en is not None:
        j = int(np.argmax(en)); s += "  (normal results: %.3f at %r)" % (en[j], float(x[j]))
    if bad.any(): s += "  BAD specials/overflow at %r" % x[bad][:5]
    print(s, flush=True)
    return float(e[i])

def mp_ref(args):
    op, xs = args
    out = np.empty((len(xs), 2))
    for i, x in enumerate(xs):
        x = mp.mpf(float(x))
        if op == 0: v = mp.exp(x)
        elif op == 1: v = mp.ncdf(x)
        else: v = mp.npdf(x)
        hi = float(v)
        if hi == 0 or abs(hi) == np.inf: lo = 0.0
        else:  # the rest in ulps of hi (as a double it could underflow)
            lo = float((v - mp.mpf(hi)) / mp.mpf(float(ulp_of(np.float64(hi), np.float64))))
        out[i] = hi, lo
    return out
def refs_d(op, x, pool):
    chunks = np.array_split(x, 16)
    r = np.concatenate(pool.map(mp_ref, [(op, c) for c in chunks]))
    return r[:, 0], r[:, 1]

if __name__ == '__main__':
    pool = Pool(2)
    if 'f' in WHAT:
        # every 2^8-th float bit pattern over all finite floats, both signs
        b = np.arange(0, 0x7f800000, 256, dtype=np.uint32)
        xf = np.concatenate([b.view(np.float32), (b | 0x80000000).view(np.float32)])
        xf = np.concatenate([xf, np.float32([np.inf, -np.inf, np.nan, 0.0, -0.0,
                 88.72283, 88.72284, 88.7228, 88.723, -87.33654, -87.3365, -103.9721,
                 -103.97208, -103.9720, -104.0, 89.0, -150, 1e30, -1e30])])
        # near the thresholds of exp, densely
        for c in (88.7228391, -87.3365448, -103.972084):
            xf = np.concatenate([xf, np.nextafter(np.float32(c), np.float32(np.inf))
                     + np.float32(0) * np.arange(1)])
            cb = np.float32(c).view(np.int32)
            xf = np.concatenate([xf, (cb + np.arange(-200000, 200000, dtype=np.int32)).view(np.float32)])
        # Phi, phi: all floats of [-20, 20] with step 2^6 in the bit pattern
        b2 = np.arange(0, np.float32(20).view(np.uint32) + 1, 64, dtype=np.uint32)
        xn = np.concatenate([xf, b2.view(np.float32), (b2 | 0x80000000).view(np.float32)])
        with np.errstate(all='ignore'):
            rexp = np.exp(xf.astype(np.float64))
            xd = xn.astype(np.float64)
            rcdf = sp.ndtr(xd)
            rpdf = np.exp(-0.5 * xd * xd) / np.sqrt(2 * np.pi)
        # mpmath check of the float64 references on a sample
        idx = np.random.default_rng(1).choice(len(xn), 2000)
        for i in idx:
            if np.isfinite(xd[i]) and abs(xd[i]) < 15:
                assert abs(rcdf[i] / float(mp.ncdf(mp.mpf(xd[i]))) - 1) < 1e-13, xd[i]
        for l in LEVELS:
            print("== float32", l)
            y = run(libs[l], np.float32, 0, xf); e, bad = err_f(y, rexp)
            rep("exp", e, bad, xf, normal_only(e, rexp, np.float32))
            y = run(libs[l], np.float32, 1, xn); e, bad = err_f(y, rcdf)
            rep("Phi", e, bad, xn, normal_only(e, rcdf, np.float32))
            y = run(libs[l], np.float32, 2, xn); e, bad = err_f(y, rpdf)
            rep("phi", e, bad, xn, normal_only(e, rpdf, np.float32))
    if 'd' in WHAT:
        rng = np.random.default_rng(2)
        N = int(sys.argv[3]) if len(sys.argv) > 3 else 300000
        mag = np.exp2(rng.uniform(-1074, 10, N))
        xe = np.concatenate([mag, -mag, rng.uniform(-746, 710, N),
                             709.782712893384 + rng.uniform(-1e-3, 1e-3, 2000),
                             -708.3964185322641 + rng.uniform(-1e-3, 1e-3, 2000),
                             -745.1332191019411 + rng.uniform(-1e-3, 1e-3, 2000),
                             [np.inf, -np.inf, np.nan, 0.0, -0.0, 710, -746, 1e300, -1e300,
                              709.78271289338397, 709.782712893384, -745.13321910194122]])
        mag = np.exp2(rng.uniform(-1074, 8, N))
        xn = np.concatenate([mag, -mag, rng.uniform(-40, 40, 2 * N), rng.uniform(-3.5, 3.5, N),
                             [np.inf, -np.inf, np.nan, 0.0, -0.0, 38.5, -38.5, 37.5, -37.5]])
        ee = refs_d(0, xe, pool); ec = refs_d(1, xn, pool); ep = refs_d(2, xn, pool)
        for l in LEVELS:
            print("== float64", l)
            y = run(libs[l], np.float64, 0, xe); e, bad = err_d(y, *ee)
            rep("exp", e, bad, xe, normal_only(e, ee[0], np.float64))
            y = run(libs[l], np.float64, 1, xn); e, bad = err_d(y, *ec)
            rep("Phi", e, bad, xn, normal_only(e, ec[0], np.float64))
            y = run(libs[l], np.float64, 2, xn); e, bad = err_d(y, *ep)
            rep("phi", e, bad, xn, normal_only(e, ep[0], np.float64))
