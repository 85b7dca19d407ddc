/* bcc's helpers test the kernel version at compile time: claim 5.8, below every kernel the
 * bundled tree is used on (it needs BTF; tp_btf needs 5.5), so that perf_submit uses
 * BPF_F_CURRENT_CPU as with the kernel's own headers. Tracing programs ignore the version. */
#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + (c))
#define LINUX_VERSION_CODE KERNEL_VERSION(5, 8, 0)
