/*
 * PyTorch's MKL on its AVX-512 kernels on an AMD CPU, for the guide and the products probe.
 *
 * The MKL inside PyTorch's wheel (oneMKL 2024.2, linked into libtorch_cpu.so) picks its kernels
 * by CPU vendor: on an AMD CPU it runs its code for CPUs without AVX-512, even where the CPU
 * has AVX-512 (Zen 4, Zen 5), and MKL_ENABLE_INSTRUCTIONS=AVX512 changes nothing
 * (docs/benchmarks.md, "A third kind of CPU"). libtorch_cpu.so exports MKL's vendor checks,
 * `mkl_serv_intel_cpu` and `mkl_serv_intel_cpu_true`; preloading this library, whose versions
 * say "Intel", makes MKL take the paths it takes on a Xeon with the same instructions. So on
 * an AMD CPU with AVX-512 both sides of a comparison run AVX-512 kernels, as on a Xeon.
 *
 * This changes only PyTorch's side; our binaries call no MKL, so preloading it into the whole
 * guide (its PyTorch worker inherits the environment) leaves our side as it is. The worker
 * reports LD_PRELOAD in its versions, and the guide's header prints it.
 *
 *   gcc -O2 -shared -fPIC -o /tmp/libintel_cpu.so benches/probes/mkl-avx512/intel_cpu.c
 *   LD_PRELOAD=/tmp/libintel_cpu.so cargo xtask bench --vs-pytorch ...
 *   LD_PRELOAD=/tmp/libintel_cpu.so python3 benches/probes/prompt-products/torch_probe.py
 *
 * (cargo, and the compiler where it builds, load the library too; nothing in them calls MKL.
 * The binary alone, target/release/guide, built with every backend as xtask builds it, wants
 * BURN_DEVICE=flex as well: xtask sets it, the binary would otherwise pick another backend.)
 *
 * Raw outputs of the runs in docs/benchmarks.md ("MKL on its AVX-512 kernels on the Zen 5 VM"):
 * run-2026-12-04-zen5.txt here (check.py and the products probe), the guide's in docs/:
 * guide-zen5-mkl-avx512-2026-12-04.{txt,json} and guide-zen5-mkl-avx512-1.3b-2026-12-04.{txt,json},
 * and after third_party/gemm-common's change 3 guide-zen5-mkl-avx512-half-l2-2026-12-05.{txt,json}
 * and guide-zen5-mkl-avx512-half-l2-1.3b-2026-12-05.{txt,json}.
 */

/* MKL's "is this an Intel CPU" checks, answered yes. */
int mkl_serv_intel_cpu(void) { return 1; }
int mkl_serv_intel_cpu_true(void) { return 1; }
