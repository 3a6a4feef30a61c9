/* The two cores' FMA peak for docs/benchmarks.md, "The input gradient's products against MKL's AVX-512 kernels": each
   thread runs 12 independent chains of 512-bit FMAs (more than latency x throughput needs).
   gcc -O2 -mavx512f -o /tmp/fma_peak fma_peak.c -lpthread && /tmp/fma_peak 1 && /tmp/fma_peak 2 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <pthread.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define N 200000000L
static void* run(void*p){
  __m512 a[12]; __m512 b=_mm512_set1_ps(1.0000001f), c=_mm512_set1_ps(1e-9f);
  for(int i=0;i<12;i++)a[i]=_mm512_set1_ps(i);
  for(long n=0;n<N;n++){
    #pragma GCC unroll 12
    for(int i=0;i<12;i++)a[i]=_mm512_fmadd_ps(a[i],b,c);
  }
  float s=0; for(int i=0;i<12;i++) s+=_mm512_reduce_add_ps(a[i]);
  *(float*)p=s; return 0;}
int main(int argc,char**argv){int T=argc>1?atoi(argv[1]):1; pthread_t th[8]; float r[8];
 double t0=now(); for(int i=0;i<T;i++)pthread_create(&th[i],0,run,&r[i]); for(int i=0;i<T;i++)pthread_join(th[i],0);
 double dt=now()-t0; printf("%d threads: %.1f GFLOP/s (%.2f s) %f\n",T, T*N*12.0*32/dt/1e9, dt, r[0]);}
