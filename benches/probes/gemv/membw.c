// The memory read rate a one-token forward of OPT-1.3b could at best stream its layer weights at:
// 144 arrays of OPT-1.3b's layer shapes (24 x four 2048x2048 and 2048x8192, 8192x2048; 4.8 GB),
// each summed by 2 OpenMP threads taking half of it (as the split one-row products take half of
// a weight's rows each), one pass over all of them a round, 12 rounds.
//   gcc -O2 -mavx512f -fopenmp -o /tmp/membw benches/probes/gemv/membw.c && /tmp/membw [OFFSET]
// OFFSET (bytes, default 0) shifts every array from malloc's alignment.
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    size_t sizes[6] = {2048 * 2048, 2048 * 2048, 2048 * 2048, 2048 * 2048, 2048 * 8192, 8192 * 2048};
    float *a[144];
    size_t n[144], bytes = 0;
    int offset = argc > 1 ? atoi(argv[1]) : 0;
    for (int i = 0; i < 144; i++) {
        n[i] = sizes[i % 6];
        a[i] = (float *)((char *)malloc(n[i] * 4 + 128) + offset);
        bytes += n[i] * 4;
        for (size_t j = 0; j < n[i]; j++) a[i][j] = j * 1e-9f;
    }
    for (int r = 0; r < 12; r++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        float s = 0;
        for (int i = 0; i < 144; i++) {
#pragma omp parallel reduction(+ : s) num_threads(2)
            {
                __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
                float *p = a[i];
#pragma omp for
                for (size_t j = 0; j < n[i]; j += 64) {
                    s0 = _mm512_add_ps(s0, _mm512_loadu_ps(p + j));
                    s1 = _mm512_add_ps(s1, _mm512_loadu_ps(p + j + 16));
                    s2 = _mm512_add_ps(s2, _mm512_loadu_ps(p + j + 32));
                    s3 = _mm512_add_ps(s3, _mm512_loadu_ps(p + j + 48));
                }
                s += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
            }
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double t = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
        printf("round %d: %.1f ms, %.1f GB/s (sum %g)\n", r, t * 1e3, bytes / t / 1e9, s);
    }
    return 0;
}
