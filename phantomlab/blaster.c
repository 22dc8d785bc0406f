/* A fast sender of hostile datagrams for tests/e2e/dataplane/test_blast.py (see blaster.py).
 *
 *   blaster HOST PORT COUNT RATE SEED INDEX MARKER TEMPLATES
 *
 * sends COUNT datagrams to HOST:PORT (IPv4), at most RATE per second (0: as
 * fast as the socket takes them), with sendmmsg(2) in batches of 512 on a
 * blocking socket (so every datagram counted as sent left through it).
 * TEMPLATES is a file of captured real datagrams: records of u16 length
 * (little-endian), u8 kind (0 handshake, 1 transport; informative), bytes.  INDEX is the
 * receiver index of the live session, MARKER the plaintext put into forged
 * packets.  Prints one JSON line: {"sent": N, "seconds": S, "by_class": {...}}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SLOT 256
#define BATCH 512
#define MAXT 256

enum { C_RANDOM, C_TRUNCATED, C_BITFLIP, C_REPLAY, C_FORGED, NCLASS };
static const char *names[NCLASS] = {"random", "truncated", "bitflip", "replay", "forged"};
static const int weights[NCLASS] = {25, 15, 25, 10, 25};   /* as blaster.CLASSES/WEIGHTS */

static uint64_t s[2];
static uint64_t rnd(void) {                 /* xorshift128+ */
    uint64_t x = s[0], y = s[1];
    s[0] = y;
    x ^= x << 23;
    s[1] = x ^ y ^ (x >> 17) ^ (y >> 26);
    return s[1] + y;
}
static uint32_t below(uint32_t n) { return n ? (uint32_t)(rnd() % n) : 0; }
static void fill(unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i += 8) {
        uint64_t r = rnd();
        memcpy(p + i, &r, n - i < 8 ? n - i : 8);
    }
}

static unsigned char tmpl[MAXT][SLOT];
static size_t tlen[MAXT];
static int ntmpl;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static size_t make(int cls, unsigned char *d, uint32_t index, const char *marker) {
    static const size_t hsize[4] = {0, 164, 108, 64};
    size_t n, i;
    int t;
    switch (cls) {
    case C_RANDOM:
        n = below(5) < 1 ? below(5) : 5 + below(196);
        fill(d, n);
        if (n >= 4 && (rnd() & 1)) {
            t = 1 + below(4);
            if (t < 4 && (rnd() & 1)) {
                n = hsize[t];
                fill(d, n);
            }
            d[0] = (unsigned char)t;
            d[1] = d[2] = d[3] = 0;
        }
        return n;
    case C_TRUNCATED:
        t = below(ntmpl);
        n = below(tlen[t]);
        memcpy(d, tmpl[t], n);
        return n;
    case C_BITFLIP:
        t = below(ntmpl);
        n = tlen[t];
        memcpy(d, tmpl[t], n);
        for (i = 1 + below(3); i > 0; i--) {
            uint32_t bit = below(8 * n);
            d[bit >> 3] ^= 1u << (bit & 7);
        }
        return n;
    case C_REPLAY:
        t = below(ntmpl);
        memcpy(d, tmpl[t], tlen[t]);
        return tlen[t];
    default: {                                   /* forged transport */
        uint64_t counter = (rnd() & 1) ? rnd() : below(1 << 16);
        size_t m = strlen(marker), extra = below(120);
        d[0] = 4; d[1] = d[2] = d[3] = 0;
        memcpy(d + 4, &index, 4);                /* little-endian host */
        memcpy(d + 8, &counter, 8);
        fill(d + 16, 16);                        /* the "MAC" */
        memcpy(d + 32, marker, m);
        fill(d + 32 + m, extra);
        return 32 + m + extra;
    }
    }
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: blaster HOST PORT COUNT RATE SEED INDEX MARKER TEMPLATES\n");
        return 2;
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) return 2;
    long long count = atoll(argv[3]);
    double rate = atof(argv[4]);
    s[0] = 0x9E3779B97F4A7C15ull ^ strtoull(argv[5], 0, 10);
    s[1] = 0xD1B54A32D192ED03ull;
    uint32_t index = (uint32_t)strtoul(argv[6], 0, 10);
    const char *marker = argv[7];
    if (strlen(marker) > 64) return 2;
    FILE *f = fopen(argv[8], "rb");
    if (!f) { perror("templates"); return 2; }
    unsigned char hdr[3];
    while (ntmpl < MAXT && fread(hdr, 1, 3, f) == 3) {
        size_t n = hdr[0] | (hdr[1] << 8);
        unsigned char tmp[65536];
        if (fread(tmp, 1, n, f) != n) break;
        if (n == 0 || n > SLOT) continue;
        memcpy(tmpl[ntmpl], tmp, n);
        tlen[ntmpl] = n;
        ntmpl++;
    }
    fclose(f);
    if (!ntmpl) { fprintf(stderr, "no templates\n"); return 2; }

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) { perror("socket"); return 1; }
    static unsigned char buf[BATCH][SLOT];
    static struct iovec iov[BATCH];
    static struct mmsghdr msgs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = buf[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    long long by[NCLASS] = {0}, done = 0;
    int total_w = 0;
    for (int c = 0; c < NCLASS; c++) total_w += weights[c];
    double t0 = now();
    while (done < count) {
        int n = count - done < BATCH ? (int)(count - done) : BATCH;
        for (int i = 0; i < n; i++) {
            int w = below(total_w), c = 0;
            while (w >= weights[c]) w -= weights[c++];
            iov[i].iov_len = make(c, buf[i], index, marker);
            by[c]++;
        }
        int off = 0;
        while (off < n) {
            int k = sendmmsg(fd, msgs + off, n - off, 0);
            if (k < 0) {
                if (errno == EINTR || errno == EAGAIN || errno == ENOBUFS) { usleep(1000); continue; }
                perror("sendmmsg");
                return 1;
            }
            off += k;
        }
        done += n;
        if (rate > 0) {
            double ahead = done / rate - (now() - t0);
            if (ahead > 0) usleep((useconds_t)(ahead * 1e6));
        }
    }
    double secs = now() - t0;
    printf("{\"sent\": %lld, \"seconds\": %.2f, \"rate\": %.0f, \"by_class\": {", done, secs, done / secs);
    for (int c = 0; c < NCLASS; c++) printf("%s\"%s\": %lld", c ? ", " : "", names[c], by[c]);
    printf("}}\n");
    return 0;
}
