/* ns per element of cbn_vexp and cbn_vnormal, 1M elements in L2:
 *   gcc -O2 bench.c -o bench /tmp/vecmath/lib_avx2.so -Wl,-rpath,/tmp/vecmath (after drive.py) */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
double time_f32(int, const float *, float *, long, int);
double time_f64(int, const double *, double *, long, int);
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(void) {
    long n = 1 << 16; /* 256 KB float in + out: L2 */
    float *xf = aligned_alloc(64, n * 4), *yf = aligned_alloc(64, n * 4);
    double *xd = aligned_alloc(64, n * 8), *yd = aligned_alloc(64, n * 8);
    for (long i = 0; i < n; i++) { xf[i] = (float)(20.0 * i / n - 10); xd[i] = 20.0 * i / n - 10; }
    int reps = 16; /* 1M elements */
    for (int op = 0; op < 2; op++) {
        double best = 1e9, bd = 1e9;
        for (int k = 0; k < 5; k++) {
            double t0 = now(); time_f32(op, xf, yf, n, reps); double t1 = now();
            if (t1 - t0 < best) best = t1 - t0;
            t0 = now(); time_f64(op, xd, yd, n, reps); t1 = now();
            if (t1 - t0 < bd) bd = t1 - t0;
        }
        printf("%s: f32 %.2f ns/elem, f64 %.2f ns/elem\n", op ? "normal(Phi+phi)" : "exp",
               best * 1e9 / (n * reps), bd * 1e9 / (n * reps));
    }
    return 0;
}
