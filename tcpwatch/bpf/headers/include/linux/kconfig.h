/* tcpwatch's stand-in for the kernel's include tree: bcc includes a few headers by name, and
 * tcpwatch's program takes no struct layout from headers (every offset comes from the
 * running kernel's BTF), so these few lines replace /lib/modules/$(uname -r)/build. bcc
 * includes this file first in every compile. */
#define CONFIG_BPF_SYSCALL 1
#define __always_inline inline __attribute__((always_inline))
