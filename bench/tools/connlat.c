/* connlat: connection-setup latency of fresh TCP connections.
 *
 *   connlat server PORT            accept forever; per connection: read 1 byte, write 1 byte,
 *                                  close (the server closes first, so TIME_WAIT stays on the
 *                                  server side and the client never runs out of ports)
 *   connlat client IP PORT N       N sequential connections; each: socket, connect, send 1 byte,
 *                                  wait for 1 byte back (timer stops here), wait for EOF, close.
 *                                  Prints: "n=N ok=K p50_us=.. p99_us=.. mean_us=.. total_s=.."
 *
 * The measured time runs from just before connect() to the first byte received: the cost an
 * application sees for a fresh connection (handshake, accept, and with FreeFlow the router's
 * work), plus one small round trip. Plain blocking sockets only, so it works unchanged under
 * LD_PRELOAD=libfsocket.so.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(const double *v, int n, double p) {
  if (n == 0) return 0;
  int i = (int)(p / 100.0 * (n - 1) + 0.5);
  return v[i];
}

static int server(int port) {
  signal(SIGPIPE, SIG_IGN);
  int l = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1024) < 0) {
    perror("connlat server: bind/listen");
    return 1;
  }
  printf("connlat server listening on %d\n", port);
  fflush(stdout);
  for (;;) {
    int c = accept(l, NULL, NULL);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      perror("connlat server: accept");
      return 1;
    }
    char b;
    if (read(c, &b, 1) == 1) (void)!write(c, &b, 1);
    close(c);
  }
}

static int client(const char *ip, int port, int n) {
  signal(SIGPIPE, SIG_IGN);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
    fprintf(stderr, "connlat: bad address %s\n", ip);
    return 2;
  }
  double *v = calloc(n, sizeof *v);
  int ok = 0, errors = 0;
  double t0 = now_us();
  for (int i = 0; i < n; i++) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) { perror("socket"); return 1; }
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    double a0 = now_us();
    char b = 'x';
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0 || write(s, &b, 1) != 1 || read(s, &b, 1) != 1) {
      if (errors++ < 5) fprintf(stderr, "connlat: connection %d failed: %s\n", i, strerror(errno));
      close(s);
      continue;
    }
    v[ok++] = now_us() - a0;
    while (read(s, &b, 1) > 0) {} /* wait for the server's close: TIME_WAIT stays there */
    close(s);
  }
  double total = (now_us() - t0) / 1e6;
  qsort(v, ok, sizeof *v, cmp);
  double sum = 0;
  for (int i = 0; i < ok; i++) sum += v[i];
  printf("n=%d ok=%d errors=%d p50_us=%.2f p99_us=%.2f mean_us=%.2f total_s=%.4f\n", n, ok, errors,
         pct(v, ok, 50), pct(v, ok, 99), ok ? sum / ok : 0, total);
  return ok == n ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "server")) return server(atoi(argv[2]));
  if (argc == 5 && !strcmp(argv[1], "client")) return client(argv[2], atoi(argv[3]), atoi(argv[4]));
  fprintf(stderr, "usage: connlat server PORT | connlat client IP PORT N\n");
  return 2;
}
