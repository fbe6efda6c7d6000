/* The benchmark workload: a process that holds MEM_MB MiB of memory, half random bytes and
 * half text, and (optionally) wrote RW_MB MiB of files of the same mix to its read-write layer.
 *
 *   memfill MEM_MB RW_MB [TEXT_PCT]     (TEXT_PCT: share of text, default 50; 0 = all random)
 *   memfill --emit MB [TEXT_PCT]         write MB MiB of the same mix to stdout and exit
 *                                        (benchmarks/wire_floor.py measures its compressibility)
 *
 * The content depends on a seed read from getrandom(), so a container restarted from scratch
 * would hold different memory: only a real restore reproduces the checksum. On SIGUSR1 the
 * process hashes its whole buffer and writes "<seq> <hash>\n" to /tmp/sum (seq counts the
 * requests), which the benchmark reads with `docker exec cat` before and after a migration.
 * /tmp/ready appears once everything is written. Built static (gcc -O2 -static) so it runs on
 * the busybox image without a libc in it.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t want_sum;
static volatile sig_atomic_t want_exit;

static void on_usr1(int sig) { (void)sig; want_sum = 1; }
static void on_term(int sig) { (void)sig; want_exit = 1; }

static uint64_t s0, s1; /* xorshift128+: fast, and zstd cannot compress its output */

static uint64_t next(void) {
    uint64_t x = s0, y = s1;
    s0 = y;
    x ^= x << 23;
    s1 = x ^ y ^ (x >> 17) ^ (y >> 26);
    return s1 + y;
}

static const char *words[] = {
    "container", "checkpoint", "restore", "memory", "page", "socket", "layer", "image",
    "daemon", "kernel", "process", "thread", "migrate", "network", "bridge", "volume",
    "the", "a", "of", "to", "and", "in", "is", "it", "for", "on", "with", "as", "was",
    "request", "response", "status", "ok", "error", "timeout", "retry", "user", "session",
};
#define NWORDS (sizeof(words) / sizeof(words[0]))

/* Half random, half log-like text lines. */
static unsigned text_pct = 50;

static void fill(char *p, size_t n) {
    size_t half = n / 100 * (100 - text_pct), i = 0;
    for (; i + 8 <= half; i += 8) {
        uint64_t v = next();
        memcpy(p + i, &v, 8);
    }
    uint64_t line = 0;
    while (i < n) {
        char buf[256];
        int len = snprintf(buf, sizeof buf, "%08llu %llu INFO",
                           (unsigned long long)line++, (unsigned long long)(next() % 100000));
        int nw = 4 + (int)(next() % 8);
        for (int w = 0; w < nw && len < 200; w++)
            len += snprintf(buf + len, sizeof buf - (size_t)len, " %s", words[next() % NWORDS]);
        buf[len++] = '\n';
        size_t k = (size_t)len < n - i ? (size_t)len : n - i;
        memcpy(p + i, buf, k);
        i += k;
    }
}

static uint64_t hash(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ULL, acc = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        acc = (acc ^ v) * 0x9E3779B97F4A7C15ULL;
        acc ^= acc >> 29;
        h += acc;
    }
    for (; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h ^ acc;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int write_file(const char *path, const char *text) {
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write_all(fd, text, strlen(text)) < 0) return -1;
    close(fd);
    return rename(tmp, path); /* a reader never sees half a line */
}

static int emit(int argc, char **argv) {
    if (argc == 4) text_pct = (unsigned)strtoul(argv[3], NULL, 10) % 101;
    size_t total = (size_t)strtoull(argv[2], NULL, 10) << 20;
    const size_t chunk = 8u << 20; /* the same 8 MiB units as the read-write layer's files */
    char *b = malloc(chunk);
    if (!b) return 1;
    for (size_t off = 0; off < total; off += chunk) {
        size_t n = total - off < chunk ? total - off : chunk;
        fill(b, n);
        if (write_all(1, b, n) < 0) return 1;
    }
    free(b);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "--emit") == 0) {
        if (getrandom(&s0, sizeof s0, 0) != sizeof s0 || getrandom(&s1, sizeof s1, 0) != sizeof s1)
            return 1;
        s0 |= 1;
        return emit(argc, argv);
    }
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: memfill MEM_MB RW_MB [TEXT_PCT]\n");
        return 2;
    }
    if (argc == 4) text_pct = (unsigned)strtoul(argv[3], NULL, 10) % 101;
    size_t mem = (size_t)strtoull(argv[1], NULL, 10) << 20;
    size_t rw = (size_t)strtoull(argv[2], NULL, 10) << 20;
    if (getrandom(&s0, sizeof s0, 0) != sizeof s0 || getrandom(&s1, sizeof s1, 0) != sizeof s1) {
        perror("getrandom");
        return 1;
    }
    s0 |= 1;

    const size_t chunk = 8u << 20; /* read-write layer: 8 MiB files */
    char *fbuf = malloc(chunk);
    if (!fbuf) return 1;
    mkdir("/data", 0755);
    mkdir("/data/rw", 0755);
    for (size_t off = 0, k = 0; off < rw; off += chunk, k++) {
        size_t n = rw - off < chunk ? rw - off : chunk;
        fill(fbuf, n);
        char path[64];
        snprintf(path, sizeof path, "/data/rw/f%05zu", k);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || write_all(fd, fbuf, n) < 0) {
            perror(path);
            return 1;
        }
        close(fd);
    }
    free(fbuf);

    char *buf = malloc(mem ? mem : 1);
    if (!buf) {
        perror("malloc");
        return 1;
    }
    fill(buf, mem); /* touches every page: all of it is resident */

    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    unsigned long long seq = 0;
    char line[128];
    snprintf(line, sizeof line, "%llu %016llx\n", seq, (unsigned long long)hash((unsigned char *)buf, mem));
    write_file("/tmp/sum", line);
    write_file("/tmp/ready", "ready\n");
    while (!want_exit) {
        if (want_sum) {
            want_sum = 0;
            seq++;
            snprintf(line, sizeof line, "%llu %016llx\n", seq,
                     (unsigned long long)hash((unsigned char *)buf, mem));
            write_file("/tmp/sum", line);
        }
        /* a signal between the check and the sleep waits at most one tick */
        usleep(50000);
    }
    return 0;
}
