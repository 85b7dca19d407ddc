/*
 * churn: how many TCP connections per second one thread can open and close on loopback.
 *
 *   churn SECONDS MAX_CONNECTIONS [PROGRESS_MS]
 *
 * Each connection: connect, accept, the client closes first, then the server: 10 state
 * transitions (client CLOSE->SYN_SENT->ESTABLISHED->FIN_WAIT1->FIN_WAIT2->CLOSE, server
 * LISTEN->SYN_RECV->ESTABLISHED->CLOSE_WAIT->LAST_ACK->CLOSE). Clients bind source addresses
 * spread over 127.1.0.0/16 so that TIME_WAIT sockets do not exhaust ephemeral ports.
 * Stops at SECONDS or MAX_CONNECTIONS, whichever comes first; prints connections/s. With
 * PROGRESS_MS, it also prints "P <CLOCK_MONOTONIC seconds> <connections so far>" about every
 * PROGRESS_MS, so that a caller can split the run into slices by time.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: churn SECONDS MAX_CONNECTIONS [PROGRESS_MS]\n");
        return 2;
    }
    double seconds = atof(argv[1]);
    long max_connections = atol(argv[2]);
    double progress = argc == 4 ? atof(argv[3]) / 1000 : 0;
    int one = 1;
    int lst = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(lst, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(lst, (struct sockaddr *)&server, sizeof(server)) || listen(lst, 1024)) {
        perror("listen");
        return 1;
    }
    socklen_t len = sizeof(server);
    getsockname(lst, (struct sockaddr *)&server, &len);

    double start = now(), deadline = start + seconds, next_progress = start;
    long done = 0;
    while (done < max_connections && (done & 255 || now() < deadline)) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(c, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        struct sockaddr_in source = {.sin_family = AF_INET,
                                     .sin_addr.s_addr = htonl(0x7f010000 | (done & 0xffff))};
        if (bind(c, (struct sockaddr *)&source, sizeof(source)) ||
            connect(c, (struct sockaddr *)&server, sizeof(server))) {
            perror("connect");
            return 1;
        }
        int s = accept(lst, NULL, NULL);
        if (s < 0) {
            perror("accept");
            return 1;
        }
        close(c);
        close(s);
        done++;
        if (progress > 0 && !(done & 15)) {
            double t = now();
            if (t >= next_progress) {
                printf("P %.6f %ld\n", t, done);
                fflush(stdout);
                next_progress = t + progress;
            }
        }
    }
    double elapsed = now() - start;
    printf("%ld %.3f %.1f\n", done, elapsed, done / elapsed);
    return 0;
}
