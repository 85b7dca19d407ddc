/* What tcpstates.c uses of <uapi/linux/in.h> and the byte-order helpers. */
#define IPPROTO_TCP 6
#define AF_INET 2
#define AF_INET6 10
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ntohs(x) ((__u16)__builtin_bswap16(x))
#else
#define ntohs(x) ((__u16)(x))
#endif
