/*
 * loadgen: a small MQTT 3.1.1 load generator for the vmqtw benchmarks.
 *
 * One thread, epoll, non-blocking sockets, TCP_NODELAY everywhere, libc only.
 * Build:  gcc -O2 -o loadgen loadgen.c        (bench/run.py does this)
 *   with TLS: gcc -O2 -DLOADGEN_TLS -o loadgen loadgen.c -lssl -lcrypto  (libssl-dev)
 *
 * --transport tcp|tls|ws|wss (pubsub and latency modes; default tcp):
 *   tls: TLS (1.2 or 1.3, whatever the broker prefers; no certificate check)
 *   ws : MQTT over WebSocket, path --ws-path (default /mqtt), subprotocol mqtt;
 *        every MQTT packet in its own masked binary frame, as MQTT.js sends it
 *   wss: WebSocket over TLS
 *   Each connection is set up (TCP, TLS handshake, HTTP upgrade) with blocking
 *   calls, then runs non-blocking like a plain one: setup is not measured.
 *
 * Modes
 *   loadgen pubsub  -p PORT --topology exact|fanout|fanin --pubs P --subs S
 *                   [-q 0|1] [--payload 64] [--warmup 1] [--duration 5]
 *                   [--window 100] [--e2e-window 1000]
 *       exact : P publishers, P subscribers; publisher i -> bench/i -> subscriber i
 *       fanout: publishers all publish to bench/0, S subscribers on bench/0
 *       fanin : publisher i -> bench/i, S (normally 1) subscribers on bench/#
 *     Flow control (so the figure is sustained throughput, not buffer filling):
 *       - end to end: a publisher may have at most E messages sent but not yet
 *         seen by every one of its subscribers (E = --e2e-window, per publisher).
 *         Sequence numbers in the payload make lost QoS 0 messages advance the
 *         window too (a gap counts as loss); a publisher blocked for 1 s with
 *         no progress is reset (counted as a stall).
 *       - QoS 1: additionally at most W PUBLISHes without PUBACK (--window).
 *       Subscribers PUBACK QoS 1 deliveries.  Deliveries are counted at the
 *       subscribers between the end of the warm-up and the end of the window.
 *       After the window publishing stops and in-flight messages are drained
 *       (up to --drain seconds) so losses can be counted exactly.
 *
 *   loadgen connect -p PORT -n 10000 [-c 100] [--hold 120] [--timeout 60] [--procs 1]
 *                   [--sources K] [--ping-check]
 *       Opens N connections, at most C of them between connect() and CONNACK
 *       (so the listen backlog is never overrun); reports connections/s, then
 *       prints "IDLE n=N" and keeps them open until stdin reaches EOF (or
 *       --hold seconds), so a caller can measure the broker's memory.  --procs K
 *       splits the work over K forked processes (on 2 cores one is faster: the
 *       cost is the kernel's TCP handshake work, charged to the connecting side).
 *       --sources K spreads the connections over source addresses 127.0.0.1 ..
 *       127.0.0.K (one address has ~28k ephemeral ports towards one listener).
 *       --ping-check sends one PINGREQ on every idle connection once all are
 *       up and prints "PINGCHECK sent=N answered=M elapsed=S" (single process).
 *
 * Every connection announces --keepalive seconds (default 60, as real clients
 * do; 0 = off) and, as a client library does, sends a PINGREQ when it has sent
 * nothing for that long; PINGREQs sent and PINGRESPs received are reported.
 *
 *   loadgen latency -p PORT [--rate 2000] [--warmup 1] [--duration 5]
 *       One QoS 0 publisher at a fixed rate (timerfd), one subscriber;
 *       CLOCK_MONOTONIC send time in the payload; percentiles in microseconds.
 *
 * Output: "MARK start" / "MARK end" when the measurement window opens and
 * closes (flushed at once, so a caller can sample broker CPU), then one line
 * "RESULT key=value ...".  Errors go to stderr; exit status 0 = ok,
 * 1 = the run failed (the RESULT line is still printed when possible).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/select.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef LOADGEN_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

enum { ROLE_PUB = 1, ROLE_SUB, ROLE_CONN };
enum { ST_CONNECTING = 1, ST_WAIT_CONNACK, ST_WAIT_SUBACK, ST_READY, ST_CLOSED };

#define SCRATCH (256 * 1024)
#define OUT_HIGH (64 * 1024)     /* stop adding PUBLISHes above this much unsent output */
#define MAX_BURST 512            /* at most this many PUBLISHes per publisher per loop turn */

typedef struct conn {
    int fd;
    int role;
    int idx;
    int state;
    int out_armed;
    int sub_sent;                /* SUBSCRIBE sent */
    unsigned char *in;           /* leftover partial packet */
    size_t in_len, in_cap;
    unsigned char *out;
    size_t out_off, out_len, out_cap;
    /* publisher */
    uint64_t seq;                /* messages sent */
    uint64_t acked;              /* PUBACKs received */
    uint64_t floor;              /* stall reset: treat everything below as delivered */
    uint16_t next_pid;
    double blocked_since;
    double last_tx;              /* when output was last queued (keep alive) */
    unsigned char *tmpl;         /* PUBLISH packet template */
    size_t tmpl_len, pid_off, pay_off;
    /* --transport: TLS session, WebSocket framing state */
    void *ssl;                   /* SSL * (tls, wss) */
    size_t framed;               /* ws: out[0..framed) is wire bytes, the rest MQTT */
    uint64_t ws_left;            /* ws: payload bytes left in the current frame */
    int ws_skip;                 /* ws: the current frame is not MQTT data (control) */
    int ws_hlen;                 /* ws: bytes of a partial frame header in ws_hdr */
    unsigned char ws_hdr[14];
} conn;

/* ---- options ---------------------------------------------------------------- */
static const char *o_host = "127.0.0.1";
static int o_port = 1883;
static int o_sub_port = 0;  /* 0: subscribers use --port too */
static int o_pub_port2 = 0; /* --pub-port2: odd-numbered publishers connect there */
static int o_qos = 0;
static int o_payload = 64;
static double o_warmup = 1.0, o_duration = 5.0, o_drain = 3.0;
static int o_window = 100, o_e2e = 1000;
static int o_pubs = 1, o_subs = 1;
static int o_topology = 0;       /* 0 exact, 1 fanout, 2 fanin */
static int o_conns = 10000, o_conc = 100;
static double o_hold = 120.0, o_timeout = 60.0;
static int o_rate = 2000;
static int o_keepalive = 60;   /* seconds; PINGREQ after that long without output */
static int o_sources = 1;       /* source addresses 127.0.0.1 .. 127.0.0.K */
static int o_pingcheck = 0;
static int o_procs = 1;
static int o_persistent = 0;     /* subscribers connect with clean session off */
enum { TR_TCP, TR_TLS, TR_WS, TR_WSS };
static int o_transport = TR_TCP;
static const char *o_ws_path = "/mqtt";
#define USE_TLS() (o_transport == TR_TLS || o_transport == TR_WSS)
#define USE_WS() (o_transport == TR_WS || o_transport == TR_WSS)

/* ---- state ------------------------------------------------------------------- */
static int ep;
static struct sockaddr_in dst;
static struct sockaddr_in dst_sub;  /* subscribers' broker (--sub-port; default dst) */
static struct sockaddr_in dst_pub2; /* odd publishers' broker (--pub-port2; default dst) */
static unsigned char scratch[SCRATCH + 65536];
static char idprefix[32];
static int failed = 0;

static conn **pubs, **subs;
static uint64_t *last;           /* last[s * npubs + p] = highest seq seen + 1 */
static int **subs_of;            /* subs_of[p] = subscriber indices, -1 terminated */
static int *nsubs_of;
static uint64_t deliveries, gaps, dups, badpay, pubacks, qos_mismatch;
static uint64_t stalls;

/* latency */
static uint64_t *lat_ns;
static size_t lat_n, lat_cap;
static uint64_t t_start_ns, t_end_ns;

/* connect */
static int conn_done, conn_pending, conn_opened, conn_errors, conn_closed_idle;

/* keep alive: every open connection, swept once a second */
static conn **reg;
static size_t reg_n, reg_cap;
static double next_ka_sweep;
static uint64_t pings_sent, pings_answered;
static double loop_now;          /* now_s() at the last poll_once */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static double now_s(void) { return now_ns() / 1e9; }

static double cpu_user_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ---- buffers ------------------------------------------------------------------- */
static void out_reserve(conn *c, size_t extra) {
    if (c->out_off && c->out_off == c->out_len) c->out_off = c->out_len = c->framed = 0;
    if (c->out_len + extra <= c->out_cap) return;
    if (c->out_off) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->framed = c->framed > c->out_off ? c->framed - c->out_off : 0;
        c->out_off = 0;
        if (c->out_len + extra <= c->out_cap) return;
    }
    size_t cap = c->out_cap ? c->out_cap : 256;
    while (cap < c->out_len + extra) cap *= 2;
    c->out = realloc(c->out, cap);
    if (!c->out) die("realloc");
    c->out_cap = cap;
}

static void out_put(conn *c, const void *p, size_t n) {
    out_reserve(c, n);
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

static void set_events(conn *c, int want_out) {
    if (c->out_armed == want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl mod");
    c->out_armed = want_out;
}

static void conn_close(conn *c, const char *why) {
    if (c->state == ST_CLOSED) return;
    if (c->role == ROLE_CONN && (c->state == ST_CONNECTING || c->state == ST_WAIT_CONNACK))
        conn_pending--;
    if (why && c->role != ROLE_CONN)
        fprintf(stderr, "loadgen: connection %s%d closed: %s\n",
                c->role == ROLE_PUB ? "pub" : "sub", c->idx, why);
    if (c->role == ROLE_CONN) {
        struct linger lg = {1, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
#ifdef LOADGEN_TLS
    if (c->ssl) { SSL_free(c->ssl); c->ssl = NULL; }
#endif
    close(c->fd);
    c->fd = -1;
    c->state = ST_CLOSED;
    free(c->in); c->in = NULL; c->in_len = c->in_cap = 0;
    free(c->out); c->out = NULL; c->out_len = c->out_off = c->out_cap = 0;
}

/* ---- transports: TLS and WebSocket under the MQTT byte stream ------------------- */
#ifdef LOADGEN_TLS
static SSL_CTX *tls_ctx;
/* send()/recv() semantics over SSL: -1 with errno EAGAIN when it would block */
static ssize_t tls_io(conn *c, void *buf, size_t n, int writing) {
    ERR_clear_error();
    int r = writing ? SSL_write(c->ssl, buf, (int)n) : SSL_read(c->ssl, buf, (int)n);
    if (r > 0) return r;
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE: errno = EAGAIN; return -1;
    case SSL_ERROR_ZERO_RETURN: return 0;
    case SSL_ERROR_SYSCALL: if (r == 0 || !errno) errno = ECONNRESET; return -1;
    default: errno = EPROTO; return -1;
    }
}
#endif

static ssize_t io_send(conn *c, const void *buf, size_t n) {
#ifdef LOADGEN_TLS
    if (c->ssl) return tls_io(c, (void *)buf, n, 1);
#endif
    return send(c->fd, buf, n, MSG_NOSIGNAL);
}

static ssize_t io_recv(conn *c, void *buf, size_t n) {
#ifdef LOADGEN_TLS
    if (c->ssl) return tls_io(c, buf, n, 0);
#endif
    return recv(c->fd, buf, n, 0);
}

static uint32_t ws_rand(void) {   /* xorshift: masking keys need not be strong here */
    static uint32_t x = 2463534242u;
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    return x;
}

/* ws: put every MQTT packet of out[framed..out_len) in its own masked binary frame */
static void ws_frame_out(conn *c) {
    static unsigned char *tmp;
    static size_t tmp_cap;
    size_t raw = c->out_len - c->framed;
    if (!raw) return;
    size_t need = raw + (raw / 2 + 1) * 14;  /* every packet is >= 2 bytes */
    if (need > tmp_cap) {
        tmp_cap = need * 2;
        tmp = realloc(tmp, tmp_cap);
        if (!tmp) die("realloc");
    }
    const unsigned char *b = c->out + c->framed;
    size_t pos = 0, w = 0;
    while (pos < raw) {
        size_t rem = 0, mult = 1, i = pos + 1;
        for (int k = 0; k < 4 && i < raw; k++, i++) {
            rem += (b[i] & 127) * mult;
            mult *= 128;
            if (!(b[i] & 128)) { i++; break; }
        }
        size_t plen = (i - pos) + rem;
        if (pos + plen > raw) plen = raw - pos;   /* cannot happen: whole packets only */
        tmp[w++] = 0x82;
        if (plen < 126) {
            tmp[w++] = (unsigned char)(0x80 | plen);
        } else if (plen < 65536) {
            tmp[w++] = 0x80 | 126;
            tmp[w++] = (unsigned char)(plen >> 8); tmp[w++] = (unsigned char)plen;
        } else {
            tmp[w++] = 0x80 | 127;
            for (int k = 7; k >= 0; k--) tmp[w++] = (unsigned char)((uint64_t)plen >> (8 * k));
        }
        uint32_t key = ws_rand();
        unsigned char m[4];
        memcpy(m, &key, 4);
        memcpy(tmp + w, m, 4);
        w += 4;
        for (size_t k = 0; k < plen; k++) tmp[w + k] = b[pos + k] ^ m[k & 3];
        w += plen;
        pos += plen;
    }
    c->out_len = c->framed;
    out_reserve(c, w);
    memcpy(c->out + c->out_len, tmp, w);
    c->out_len += w;
    c->framed = c->out_len;
}

/* ws: strip frame headers from buf[0..n) in place; returns the MQTT bytes kept,
 * or (size_t)-1 when the broker sent a close frame */
static size_t ws_deframe(conn *c, unsigned char *buf, size_t n) {
    size_t i = 0, w = 0;
    while (i < n) {
        if (c->ws_left) {
            size_t take = n - i;
            if (take > c->ws_left) take = (size_t)c->ws_left;
            if (!c->ws_skip) { memmove(buf + w, buf + i, take); w += take; }
            i += take;
            c->ws_left -= take;
            continue;
        }
        c->ws_hdr[c->ws_hlen++] = buf[i++];
        int h = c->ws_hlen;
        if (h < 2) continue;
        int l7 = c->ws_hdr[1] & 127, masked = c->ws_hdr[1] & 128;
        int need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + (masked ? 4 : 0);
        if (h < need) continue;
        uint64_t len = (uint64_t)l7;
        if (l7 == 126) len = ((uint64_t)c->ws_hdr[2] << 8) | c->ws_hdr[3];
        else if (l7 == 127) { len = 0; for (int k = 2; k < 10; k++) len = (len << 8) | c->ws_hdr[k]; }
        int op = c->ws_hdr[0] & 15;
        if (op == 8) return (size_t)-1;            /* close */
        c->ws_skip = !(op == 0 || op == 2);         /* text/ping/pong: not MQTT */
        c->ws_left = len;
        c->ws_hlen = 0;
    }
    return w;
}

static void flush_out(conn *c) {
    if (c->state == ST_CLOSED || c->state == ST_CONNECTING) return;
    if (USE_WS()) ws_frame_out(c);
    if (c->out_off < c->out_len) c->last_tx = loop_now;
    while (c->out_off < c->out_len) {
        ssize_t n = io_send(c, c->out + c->out_off, c->out_len - c->out_off);
        if (n > 0) { c->out_off += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { set_events(c, 1); return; }
        conn_close(c, n < 0 ? strerror(errno) : "send returned 0");
        failed = 1;
        return;
    }
    c->out_off = c->out_len = c->framed = 0;
    set_events(c, 0);
}

static size_t pending_out(conn *c) { return c->out_len - c->out_off; }

/* ---- MQTT encoding --------------------------------------------------------------- */
static size_t put_varint(unsigned char *b, size_t n) {
    size_t i = 0;
    do {
        unsigned char d = n % 128;
        n /= 128;
        if (n) d |= 128;
        b[i++] = d;
    } while (n);
    return i;
}

static size_t put_str(unsigned char *b, const char *s) {
    size_t n = strlen(s);
    b[0] = (unsigned char)(n >> 8);
    b[1] = (unsigned char)n;
    memcpy(b + 2, s, n);
    return n + 2;
}

static void send_connect(conn *c, const char *client_id) {
    unsigned char body[256], pkt[300];
    size_t n = 0;
    n += put_str(body + n, "MQTT");
    body[n++] = 4;                 /* protocol level 3.1.1 */
    /* clean session, unless --persistent-subs asks for persistent subscribers */
    body[n++] = (o_persistent && c->role == ROLE_SUB) ? 0x00 : 0x02;
    body[n++] = (unsigned char)(o_keepalive >> 8);
    body[n++] = (unsigned char)o_keepalive;
    n += put_str(body + n, client_id);
    size_t m = 0;
    pkt[m++] = 0x10;
    m += put_varint(pkt + m, n);
    memcpy(pkt + m, body, n);
    out_put(c, pkt, m + n);
}

static void send_subscribe(conn *c, const char *filter, int qos) {
    unsigned char body[256], pkt[300];
    size_t n = 0;
    body[n++] = 0; body[n++] = 1;  /* packet id 1 */
    n += put_str(body + n, filter);
    body[n++] = (unsigned char)qos;
    size_t m = 0;
    pkt[m++] = 0x82;
    m += put_varint(pkt + m, n);
    memcpy(pkt + m, body, n);
    out_put(c, pkt, m + n);
    flush_out(c);
}

static void make_template(conn *c, const char *topic, int qos) {
    size_t tl = strlen(topic);
    size_t rem = 2 + tl + (qos ? 2 : 0) + (size_t)o_payload;
    c->tmpl = calloc(1, rem + 8);
    size_t n = 0;
    c->tmpl[n++] = (unsigned char)(0x30 | (qos << 1));
    n += put_varint(c->tmpl + n, rem);
    n += put_str(c->tmpl + n, topic);
    c->pid_off = n;
    if (qos) n += 2;
    c->pay_off = n;
    memset(c->tmpl + n, 'x', (size_t)o_payload);
    uint32_t idx = (uint32_t)c->idx;
    memcpy(c->tmpl + n, &idx, 4);
    n += (size_t)o_payload;
    c->tmpl_len = n;
}

/* payload: [0..3] publisher index, [4..11] sequence, [12..19] send time (ns) */
static void put_publish(conn *c, uint64_t ts) {
    out_reserve(c, c->tmpl_len);
    unsigned char *b = c->out + c->out_len;
    memcpy(b, c->tmpl, c->tmpl_len);
    if (o_qos) {
        if (++c->next_pid == 0) c->next_pid = 1;
        b[c->pid_off] = (unsigned char)(c->next_pid >> 8);
        b[c->pid_off + 1] = (unsigned char)c->next_pid;
    }
    memcpy(b + c->pay_off + 4, &c->seq, 8);
    memcpy(b + c->pay_off + 12, &ts, 8);
    c->out_len += c->tmpl_len;
    c->seq++;
}

/* ---- connections -------------------------------------------------------------- */
static void client_id(conn *c, char *id, size_t n) {
    const char *r = c->role == ROLE_PUB ? "p" : c->role == ROLE_SUB ? "s" : "c";
    snprintf(id, n, "%s%s%d", idprefix, r, c->idx);
}

static void reg_add(conn *c) {
    if (reg_n == reg_cap) {
        reg_cap = reg_cap ? 2 * reg_cap : 1024;
        reg = realloc(reg, reg_cap * sizeof *reg);
    }
    reg[reg_n++] = c;
}

/* Blocking I/O during setup of a layered connection (fd still blocking). */
static int setup_write(conn *c, const void *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t r = io_send(c, (const char *)buf + done, n - done);
        if (r <= 0) return -1;
        done += (size_t)r;
    }
    return 0;
}

/* --transport tls|ws|wss: TCP connect, TLS handshake and HTTP upgrade done with
 * blocking calls (a handful of connections, before the measurement), then the
 * connection is made non-blocking and sends its CONNECT like a plain one. */
static conn *open_conn_layered(int role, int idx) {
    struct sockaddr_in *to = role == ROLE_SUB ? &dst_sub : &dst;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) { fprintf(stderr, "loadgen: socket: %s\n", strerror(errno)); conn_errors++; return NULL; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {10, 0};   /* bound every blocking setup call */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    conn *c = calloc(1, sizeof *c);
    c->fd = fd;
    c->role = role;
    c->idx = idx;
    const char *err = NULL;
    if (connect(fd, (struct sockaddr *)to, sizeof *to) < 0) err = strerror(errno);
#ifdef LOADGEN_TLS
    if (!err && USE_TLS()) {
        c->ssl = SSL_new(tls_ctx);
        SSL_set_fd(c->ssl, fd);
        if (SSL_connect(c->ssl) != 1) err = "TLS handshake failed";
    }
#else
    if (!err && USE_TLS()) err = "built without TLS (gcc -DLOADGEN_TLS ... -lssl -lcrypto)";
#endif
    if (!err && USE_WS()) {
        char req[512], resp[4096];
        unsigned char key[16];
        for (int k = 0; k < 16; k++) key[k] = (unsigned char)ws_rand();
        static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        char k64[25];
        int o = 0;
        for (int k = 0; k < 15; k += 3) {
            uint32_t v = (uint32_t)key[k] << 16 | (uint32_t)key[k + 1] << 8 | key[k + 2];
            for (int j = 3; j >= 0; j--) k64[o++] = b64[(v >> (6 * j)) & 63];
        }
        uint32_t v = (uint32_t)key[15] << 16;
        k64[o++] = b64[(v >> 18) & 63]; k64[o++] = b64[(v >> 12) & 63];
        k64[o++] = '='; k64[o++] = '='; k64[o] = 0;
        int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                         "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
                         o_ws_path, o_host, ntohs(to->sin_port), k64);
        if (setup_write(c, req, (size_t)n) < 0) err = "sending the WebSocket upgrade failed";
        size_t got = 0;
        while (!err) {   /* the broker sends nothing after the 101 until our CONNECT */
            ssize_t r = io_recv(c, resp + got, sizeof resp - 1 - got);
            if (r <= 0) { err = "no answer to the WebSocket upgrade"; break; }
            got += (size_t)r;
            resp[got] = 0;
            if (strstr(resp, "\r\n\r\n")) {
                if (strncmp(resp, "HTTP/1.1 101", 12) != 0) err = "WebSocket upgrade refused";
                break;
            }
            if (got >= sizeof resp - 1) err = "WebSocket upgrade answer too long";
        }
    }
    if (err) {
        fprintf(stderr, "loadgen: %s connection: %s\n", role == ROLE_SUB ? "sub" : "pub", err);
#ifdef LOADGEN_TLS
        if (c->ssl) SSL_free(c->ssl);
#endif
        close(fd);
        free(c);
        conn_errors++;
        return NULL;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add");
    c->last_tx = now_s();
    reg_add(c);
    char id[64];
    client_id(c, id, sizeof id);
    c->state = ST_WAIT_CONNACK;
    send_connect(c, id);
    flush_out(c);
    return c->state == ST_CLOSED ? NULL : c;
}

static conn *open_conn(int role, int idx) {
    if (o_transport != TR_TCP) return open_conn_layered(role, idx);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "loadgen: socket: %s\n", strerror(errno));
        conn_errors++;
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (o_sources > 1) {
        /* the port is picked at connect(), per 4-tuple, not at bind() */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(idx % o_sources));
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            fprintf(stderr, "loadgen: bind source: %s\n", strerror(errno));
            close(fd);
            conn_errors++;
            return NULL;
        }
    }
    conn *c = calloc(1, sizeof *c);
    c->fd = fd;
    c->role = role;
    c->idx = idx;
    c->state = ST_CONNECTING;
    struct sockaddr_in *to = role == ROLE_SUB ? &dst_sub
                             : role == ROLE_PUB && (idx & 1) ? &dst_pub2 : &dst;
    int r = connect(fd, (struct sockaddr *)to, sizeof *to);
    if (r < 0 && errno != EINPROGRESS) {
        fprintf(stderr, "loadgen: connect: %s\n", strerror(errno));
        close(fd);
        free(c);
        conn_errors++;
        return NULL;
    }
    /* On loopback the handshake has usually completed by now: try to send the
     * CONNECT at once and only wait for EPOLLOUT if the socket is not ready. */
    char id[64];
    client_id(c, id, sizeof id);
    c->state = ST_WAIT_CONNACK;
    send_connect(c, id);        /* buffers; flush_out below */
    c->state = ST_CONNECTING;
    ssize_t n = send(fd, c->out, c->out_len, MSG_NOSIGNAL);
    int sent_all = n == (ssize_t)c->out_len;
    if (n > 0) c->out_off = (size_t)n;
    if (sent_all) {
        c->out_off = c->out_len = 0;
        c->state = ST_WAIT_CONNACK;
    } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOTCONN &&
               errno != EINPROGRESS) {
        fprintf(stderr, "loadgen: send CONNECT: %s\n", strerror(errno));
        close(fd);
        free(c->out);
        free(c);
        conn_errors++;
        return NULL;
    } else if (n > 0) {
        c->state = ST_WAIT_CONNACK;   /* connected, partial write: flush on EPOLLOUT */
    }
    struct epoll_event ev = {.events = EPOLLIN | (sent_all ? 0 : EPOLLOUT), .data.ptr = c};
    c->out_armed = !sent_all;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add");
    c->last_tx = now_s();
    reg_add(c);
    return c;
}

/* ---- receiving -------------------------------------------------------------------- */
static void on_publish(conn *c, unsigned char hdr, const unsigned char *b, size_t len,
                       uint64_t rnow) {
    int qos = (hdr >> 1) & 3;
    if (qos != o_qos) qos_mismatch++;
    if (len < 2) { badpay++; return; }
    size_t tl = ((size_t)b[0] << 8) | b[1];
    size_t off = 2 + tl;
    uint16_t pid = 0;
    if (qos) {
        if (off + 2 > len) { badpay++; return; }
        pid = (uint16_t)((b[off] << 8) | b[off + 1]);
        off += 2;
        unsigned char ack[4] = {0x40, 2, (unsigned char)(pid >> 8), (unsigned char)pid};
        out_put(c, ack, 4);
    }
    if (off + 20 > len) { badpay++; return; }
    uint32_t p;
    uint64_t seq, ts;
    memcpy(&p, b + off, 4);
    memcpy(&seq, b + off + 4, 8);
    memcpy(&ts, b + off + 12, 8);
    if (p >= (uint32_t)o_pubs) { badpay++; return; }
    uint64_t *l = &last[(size_t)c->idx * (size_t)o_pubs + p];
    if (seq >= *l) {
        gaps += seq - *l;
        *l = seq + 1;
    } else {
        dups++;
    }
    deliveries++;
    if (lat_ns && ts >= t_start_ns && ts < t_end_ns) {
        if (lat_n == lat_cap) {
            lat_cap = lat_cap ? lat_cap * 2 : 16384;
            lat_ns = realloc(lat_ns, lat_cap * sizeof *lat_ns);
        }
        lat_ns[lat_n++] = rnow - ts;
    }
}

static void on_packet(conn *c, unsigned char hdr, const unsigned char *b, size_t len,
                      uint64_t rnow) {
    switch (hdr >> 4) {
    case 2: /* CONNACK */
        if (c->state != ST_WAIT_CONNACK || len < 2 || b[1] != 0) {
            fprintf(stderr, "loadgen: bad CONNACK (code %d)\n", len >= 2 ? b[1] : -1);
            conn_close(c, "CONNACK refused");
            failed = 1;
            return;
        }
        c->state = ST_READY;
        if (c->role == ROLE_CONN) { conn_done++; conn_pending--; }
        break;
    case 3:
        on_publish(c, hdr, b, len, rnow);
        break;
    case 4: /* PUBACK */
        c->acked++;
        pubacks++;
        break;
    case 13: /* PINGRESP */
        pings_answered++;
        break;
    case 9: /* SUBACK */
        if (len < 3 || b[2] == 0x80) {
            conn_close(c, "SUBACK failure");
            failed = 1;
            return;
        }
        c->state = ST_READY;
        break;
    default:
        break;
    }
}

/* Parse complete packets in buf[0..n); return bytes consumed. */
static size_t parse(conn *c, unsigned char *buf, size_t n, uint64_t rnow) {
    size_t pos = 0;
    while (n - pos >= 2) {
        size_t rem = 0, mult = 1, i = pos + 1;
        int ok = 0;
        for (int k = 0; k < 4 && i < n; k++, i++) {
            rem += (buf[i] & 127) * mult;
            mult *= 128;
            if (!(buf[i] & 128)) { ok = 1; i++; break; }
        }
        if (!ok) break;
        if (n - i < rem) break;
        on_packet(c, buf[pos], buf + i, rem, rnow);
        if (c->state == ST_CLOSED) return n;
        pos = i + rem;
    }
    return pos;
}

static void on_readable(conn *c) {
    for (int rounds = 0; rounds < 8 && c->state != ST_CLOSED; rounds++) {
        size_t have = c->in_len;
        if (have > 65536) { failed = 1; conn_close(c, "packet too large"); return; }
        if (have) memcpy(scratch, c->in, have);
        ssize_t r = io_recv(c, scratch + have, SCRATCH);
        if (r > 0 && USE_WS()) {
            size_t kept = ws_deframe(c, scratch + have, (size_t)r);
            if (kept == (size_t)-1) r = 0;     /* a close frame: as a closed socket */
            else if (kept == 0) continue;      /* headers or control frames only */
            else r = (ssize_t)kept;
        }
        if (r == 0) {
            if (c->role == ROLE_CONN && c->state == ST_READY) conn_closed_idle++;
            else failed = 1;
            conn_close(c, "closed by broker");
            return;
        }
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            failed = 1;
            conn_close(c, strerror(errno));
            return;
        }
        size_t total = have + (size_t)r;
        size_t used = parse(c, scratch, total, now_ns());
        if (c->state == ST_CLOSED) return;
        size_t left = total - used;
        if (left > c->in_cap) {
            c->in = realloc(c->in, left);
            c->in_cap = left;
        }
        if (left) memcpy(c->in, scratch + used, left);
        c->in_len = left;
        /* TLS returns one record per read: go on until it would block */
        if ((size_t)r < SCRATCH && !c->ssl) break;
    }
    if (c->state != ST_CLOSED && pending_out(c)) flush_out(c);
}

static void on_event(conn *c, uint32_t events) {
    if (c->state == ST_CLOSED) return;
    if (c->state == ST_CONNECTING) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
            int err = 0;
            socklen_t el = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err) {
                fprintf(stderr, "loadgen: connect: %s\n", strerror(err));
                conn_errors++;
                if (c->role != ROLE_CONN) failed = 1;
                conn_close(c, NULL);
                return;
            }
            c->state = ST_WAIT_CONNACK;
            flush_out(c);       /* the buffered CONNECT */
        }
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
    if (c->state != ST_CLOSED && (events & EPOLLOUT)) flush_out(c);
}

static void send_pingreq(conn *c) {
    static const unsigned char pingreq[2] = {0xc0, 0x00};
    out_put(c, pingreq, 2);
    pings_sent++;
    flush_out(c);
}

/* As a client library does: a PINGREQ after keepalive seconds without output. */
static void keepalive_sweep(void) {
    if (!o_keepalive || loop_now < next_ka_sweep) return;
    next_ka_sweep = loop_now + 1.0;
    for (size_t i = 0; i < reg_n; i++) {
        conn *c = reg[i];
        if (c->state == ST_READY && loop_now - c->last_tx >= o_keepalive) {
            c->last_tx = loop_now;
            send_pingreq(c);
        }
    }
}

static int poll_once(int timeout_ms) {
    struct epoll_event evs[1024];
    if (timeout_ms > 1000) timeout_ms = 1000;
    int n = epoll_wait(ep, evs, 1024, timeout_ms);
    loop_now = now_s();
    if (n < 0) {
        if (errno == EINTR) return 0;
        die("epoll_wait");
    }
    keepalive_sweep();
    for (int i = 0; i < n; i++) {
        if (evs[i].data.ptr == NULL) return -1;     /* stdin: EOF or data */
        on_event(evs[i].data.ptr, evs[i].events);
    }
    return n;
}

static int ms_until(double deadline) {
    double d = deadline - now_s();
    if (d <= 0) return 0;
    int ms = (int)(d * 1000) + 1;
    return ms > 100 ? 100 : ms;
}

/* ---- pubsub -------------------------------------------------------------------- */
static void setup_clients(void) {
    pubs = calloc((size_t)o_pubs, sizeof *pubs);
    subs = calloc((size_t)o_subs, sizeof *subs);
    last = calloc((size_t)o_pubs * (size_t)o_subs, sizeof *last);
    subs_of = calloc((size_t)o_pubs, sizeof *subs_of);
    nsubs_of = calloc((size_t)o_pubs, sizeof *nsubs_of);
    for (int p = 0; p < o_pubs; p++) {
        subs_of[p] = calloc((size_t)o_subs + 1, sizeof(int));
        int k = 0;
        for (int s = 0; s < o_subs; s++)
            if (o_topology != 0 || s == p) subs_of[p][k++] = s;
        nsubs_of[p] = k;
    }
    /* subscribers first, so nothing is published before they are in place */
    for (int s = 0; s < o_subs; s++) {
        subs[s] = open_conn(ROLE_SUB, s);
        if (!subs[s]) { fprintf(stderr, "loadgen: cannot open subscriber\n"); exit(1); }
    }
    double deadline = now_s() + o_timeout;
    for (;;) {
        int ready = 0;
        for (int s = 0; s < o_subs; s++) {
            conn *c = subs[s];
            if (c->state == ST_CLOSED) { fprintf(stderr, "loadgen: subscriber lost in setup\n"); exit(1); }
            if (c->state == ST_READY && !c->sub_sent) {
                char f[64];
                if (o_topology == 0) snprintf(f, sizeof f, "bench/%d", s);
                else if (o_topology == 1) snprintf(f, sizeof f, "bench/0");
                else snprintf(f, sizeof f, "bench/#");
                c->state = ST_WAIT_SUBACK;
                c->sub_sent = 1;
                send_subscribe(c, f, o_qos);
            } else if (c->state == ST_READY) {
                ready++;
            }
        }
        if (ready == o_subs) break;
        if (now_s() > deadline) { fprintf(stderr, "loadgen: timeout waiting for SUBACKs\n"); exit(1); }
        poll_once(ms_until(deadline));
    }
    for (int p = 0; p < o_pubs; p++) {
        pubs[p] = open_conn(ROLE_PUB, p);
        if (!pubs[p]) { fprintf(stderr, "loadgen: cannot open publisher\n"); exit(1); }
        char t[64];
        snprintf(t, sizeof t, "bench/%d", o_topology == 1 ? 0 : p);
        make_template(pubs[p], t, o_qos);
    }
    for (;;) {
        int ready = 0;
        for (int p = 0; p < o_pubs; p++) {
            if (pubs[p]->state == ST_CLOSED) { fprintf(stderr, "loadgen: publisher lost in setup\n"); exit(1); }
            if (pubs[p]->state == ST_READY) ready++;
        }
        if (ready == o_pubs) break;
        if (now_s() > deadline) { fprintf(stderr, "loadgen: timeout waiting for CONNACKs\n"); exit(1); }
        poll_once(ms_until(deadline));
    }
}

static uint64_t delivered_min(int p) {
    uint64_t m = UINT64_MAX;
    for (int k = 0; k < nsubs_of[p]; k++) {
        uint64_t v = last[(size_t)subs_of[p][k] * (size_t)o_pubs + p];
        if (v < m) m = v;
    }
    if (m == UINT64_MAX) m = pubs[p]->seq;
    if (m < pubs[p]->floor) m = pubs[p]->floor;
    return m;
}

/* Returns 1 if the publisher could send more right now. */
static int pump(conn *c, double tnow) {
    if (c->state != ST_READY) return 0;
    if (pending_out(c) > OUT_HIGH) return 0;
    int64_t allow = (int64_t)o_e2e - (int64_t)(c->seq - delivered_min(c->idx));
    if (allow <= 0) {
        if (c->blocked_since == 0) c->blocked_since = tnow;
        else if (tnow - c->blocked_since > 1.0) {
            stalls++;
            c->floor = c->seq;
            c->blocked_since = 0;
        }
        return 0;
    }
    c->blocked_since = 0;
    if (o_qos) {
        int64_t a = (int64_t)o_window - (int64_t)(c->seq - c->acked);
        if (a < allow) allow = a;
    }
    if (allow <= 0) return 0;
    if (allow > MAX_BURST) allow = MAX_BURST;
    uint64_t ts = now_ns();
    for (int64_t i = 0; i < allow; i++) put_publish(c, ts);
    flush_out(c);
    return 1;
}

static int run_pubsub(void) {
    setup_clients();
    double t0 = now_s();
    double t_start = t0 + o_warmup, t_end = t_start + o_duration;
    uint64_t d0 = 0, s0 = 0, a0 = 0, g0 = 0;
    double cpu0 = 0, w0 = 0;
    int phase = 0;              /* 0 warm-up, 1 measuring, 2 draining */
    uint64_t d1 = 0, s1 = 0, a1 = 0, g1 = 0;
    double cpu1 = 0, w1 = 0;
    double drain_deadline = 0;
    int drained = 0;
    for (;;) {
        double t = now_s();
        if (phase == 0 && t >= t_start) {
            phase = 1;
            w0 = t; cpu0 = cpu_s(); d0 = deliveries; a0 = pubacks; g0 = gaps;
            s0 = 0;
            for (int p = 0; p < o_pubs; p++) s0 += pubs[p]->seq;
            printf("MARK start\n");
            fflush(stdout);
        } else if (phase == 1 && t >= t_end) {
            phase = 2;
            w1 = t; cpu1 = cpu_s(); d1 = deliveries; a1 = pubacks; g1 = gaps;
            s1 = 0;
            for (int p = 0; p < o_pubs; p++) s1 += pubs[p]->seq;
            printf("MARK end\n");
            fflush(stdout);
            drain_deadline = t + o_drain;
        }
        if (phase == 2) {
            int done = 1;
            for (int p = 0; p < o_pubs && done; p++) {
                conn *c = pubs[p];
                if (c->state == ST_CLOSED) continue;
                for (int k = 0; k < nsubs_of[p]; k++)
                    if (last[(size_t)subs_of[p][k] * (size_t)o_pubs + p] < c->seq) { done = 0; break; }
                if (o_qos && c->acked < c->seq) done = 0;
            }
            if (done) { drained = 1; break; }
            if (t >= drain_deadline) break;
            poll_once(ms_until(drain_deadline));
            continue;
        }
        int busy = 0;
        for (int p = 0; p < o_pubs; p++) busy |= pump(pubs[p], t);
        int alive = 0;
        for (int p = 0; p < o_pubs; p++) alive += pubs[p]->state != ST_CLOSED;
        for (int s = 0; s < o_subs; s++) alive += subs[s]->state != ST_CLOSED;
        if (alive < o_pubs + o_subs && phase < 2) {
            fprintf(stderr, "loadgen: a connection was lost; stopping\n");
            failed = 1;
            if (phase == 0) { w0 = t; cpu0 = cpu_s(); }
            w1 = t; cpu1 = cpu_s(); d1 = deliveries; a1 = pubacks; g1 = gaps;
            s1 = 0;
            for (int p = 0; p < o_pubs; p++) s1 += pubs[p]->seq;
            if (phase == 0) { d0 = d1; s0 = s1; a0 = a1; g0 = g1; }
            break;
        }
        poll_once(busy ? 0 : ms_until(phase == 0 ? t_start : t_end));
    }
    /* exact loss accounting over the whole run (QoS 1 must lose nothing) */
    uint64_t expected = 0, sent = 0, unacked = 0;
    for (int p = 0; p < o_pubs; p++) {
        expected += pubs[p]->seq * (uint64_t)nsubs_of[p];
        sent += pubs[p]->seq;
        if (o_qos) unacked += pubs[p]->seq - pubs[p]->acked;
    }
    double el = w1 - w0;
    if (el <= 0) el = 1e-9;
    printf("RESULT mode=pubsub topology=%s qos=%d pubs=%d subs=%d elapsed=%.3f "
           "deliveries=%llu rate=%.0f sent=%llu pub_rate=%.0f pubacks=%llu "
           "window_gaps=%llu total_sent=%llu total_expected=%llu total_received=%llu "
           "lost=%lld dups=%llu unacked=%llu stalls=%llu bad=%llu wrong_qos=%llu drained=%d cpu=%.3f "
           "cpu_pct=%.1f "
           "failed=%d\n",
           o_topology == 0 ? "exact" : o_topology == 1 ? "fanout" : "fanin", o_qos, o_pubs,
           o_subs, el, (unsigned long long)(d1 - d0), (d1 - d0) / el,
           (unsigned long long)(s1 - s0), (s1 - s0) / el, (unsigned long long)(a1 - a0),
           (unsigned long long)(g1 - g0), (unsigned long long)sent,
           (unsigned long long)expected, (unsigned long long)deliveries,
           (long long)expected - (long long)deliveries, (unsigned long long)dups,
           (unsigned long long)unacked, (unsigned long long)stalls,
           (unsigned long long)badpay, (unsigned long long)qos_mismatch, drained, cpu1 - cpu0, 100.0 * (cpu1 - cpu0) / el, failed);
    fflush(stdout);
    return failed;
}

/* ---- connect ------------------------------------------------------------------- */
/* One worker: open n connections (ids base..base+n-1), at most conc awaiting CONNACK. */
struct crec { int connected, errors, failed, closed_idle; double t0, t1, cpu, ucpu; };

static conn **connect_worker(int n, int conc, int base, struct crec *r) {
    conn **all = calloc((size_t)n, sizeof *all);
    int opened = 0;
    r->t0 = now_s();
    double cpu0 = cpu_s(), ucpu0 = cpu_user_s();
    double deadline = r->t0 + o_timeout;
    while (conn_done < n) {
        while (conn_pending < conc && opened < n) {
            conn *c = open_conn(ROLE_CONN, base + opened);
            if (!c) break;
            all[opened++] = c;
            conn_pending++;
        }
        if (opened < n && conn_pending == 0 && conn_errors) break;
        if (opened == n && conn_pending == 0) break;
        if (now_s() > deadline) {
            fprintf(stderr, "loadgen: connect phase timed out after %.0f s\n", o_timeout);
            failed = 1;
            break;
        }
        poll_once(ms_until(deadline));
    }
    r->t1 = now_s();
    r->cpu = cpu_s() - cpu0;
    r->ucpu = cpu_user_s() - ucpu0;
    r->connected = conn_done;
    r->errors = conn_errors;
    r->failed = failed || conn_done < n;
    conn_opened = opened;
    return all;
}

/* Keep the connections until fd is readable with EOF or a 'q' (or --hold passes). */
static void hold_until_told(int fd) {
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    int have = epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0;
    double hold_until = now_s() + o_hold;
    while (now_s() < hold_until) {
        if (poll_once(have ? ms_until(hold_until) : 100) < 0) {
            char b[256];
            ssize_t r = read(fd, b, sizeof b);
            if (r <= 0) break;
            if (memchr(b, 'q', (size_t)r)) break;
        }
    }
}

static int read_full(int fd, void *buf, size_t n, double deadline) {
    size_t got = 0;
    while (got < n) {
        int ms = (int)((deadline - now_s()) * 1000);
        if (ms <= 0) return -1;
        fd_set rs;
        FD_ZERO(&rs);
        FD_SET(fd, &rs);
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        int k = select(fd + 1, &rs, NULL, NULL, &tv);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

/* One PINGREQ on every open connection at once; wait (up to 30 s) for the answers. */
static void ping_check(conn **all, int n) {
    uint64_t s0 = pings_sent, a0 = pings_answered;
    double t0 = now_s(), deadline = t0 + 30;
    loop_now = t0;
    for (int i = 0; i < n; i++)
        if (all[i] && all[i]->state == ST_READY) send_pingreq(all[i]);
    uint64_t want = pings_sent - s0;
    while (pings_answered - a0 < want && now_s() < deadline) poll_once(ms_until(deadline));
    printf("PINGCHECK sent=%llu answered=%llu elapsed=%.3f\n", (unsigned long long)want,
           (unsigned long long)(pings_answered - a0), now_s() - t0);
    fflush(stdout);
}

static int run_connect(void) {
    int procs = o_procs < 1 ? 1 : o_procs;
    if (procs > o_conns) procs = o_conns;
    printf("MARK start\n");
    fflush(stdout);
    struct crec tot = {0};
    int closed_idle = 0;
    if (procs == 1) {
        conn **all = connect_worker(o_conns, o_conc, 0, &tot);
        printf("MARK end\n");
        double el = tot.t1 - tot.t0;
        failed = tot.failed;
        printf("RESULT mode=connect conns=%d procs=1 connected=%d errors=%d elapsed=%.3f "
               "rate=%.0f cpu=%.3f cpu_pct=%.1f cpu_user_pct=%.1f failed=%d\n",
               o_conns, tot.connected, tot.errors, el, tot.connected / el, tot.cpu,
               100.0 * tot.cpu / el, 100.0 * tot.ucpu / el, failed);
        if (o_pingcheck) ping_check(all, conn_opened);
        printf("IDLE n=%d\n", tot.connected);
        fflush(stdout);
        uint64_t ps0 = pings_sent, pa0 = pings_answered;
        hold_until_told(0);
        closed_idle = conn_closed_idle;
        printf("CLOSED_WHILE_IDLE n=%d keepalive=%d pings_sent=%llu pings_answered=%llu\n",
               closed_idle, o_keepalive, (unsigned long long)(pings_sent - ps0),
               (unsigned long long)(pings_answered - pa0));
        fflush(stdout);
        for (int i = 0; i < conn_opened; i++)
            if (all[i]) conn_close(all[i], NULL);
        return failed;
    }
    /* several worker processes, each with its share of connections and concurrency */
    int up[2], down[2];
    if (pipe(up) < 0 || pipe(down) < 0) die("pipe");
    pid_t *kids = calloc((size_t)procs, sizeof *kids);
    int base = 0;
    for (int k = 0; k < procs; k++) {
        int n = o_conns / procs + (k < o_conns % procs);
        int conc = o_conc / procs + (k < o_conc % procs);
        if (conc < 1) conc = 1;
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            close(up[0]);
            close(down[1]);
            close(ep);
            ep = epoll_create1(EPOLL_CLOEXEC);
            if (ep < 0) die("epoll_create1");
            struct crec r = {0};
            conn **all = connect_worker(n, conc, base, &r);
            if (write(up[1], &r, sizeof r) != (ssize_t)sizeof r) _exit(1);
            hold_until_told(down[0]);
            r.closed_idle = conn_closed_idle;
            if (write(up[1], &r, sizeof r) != (ssize_t)sizeof r) _exit(1);
            for (int i = 0; i < conn_opened; i++)
                if (all[i]) conn_close(all[i], NULL);
            _exit(r.failed);
        }
        kids[k] = pid;
        base += n;
    }
    close(up[1]);
    close(down[0]);
    double t_first = 1e300, t_last = 0;
    int ok = 1;
    double dl = now_s() + o_timeout + 10;
    for (int k = 0; k < procs; k++) {
        struct crec r;
        if (read_full(up[0], &r, sizeof r, dl) < 0) { ok = 0; break; }
        tot.connected += r.connected;
        tot.errors += r.errors;
        tot.failed |= r.failed;
        tot.cpu += r.cpu;
        tot.ucpu += r.ucpu;
        if (r.t0 < t_first) t_first = r.t0;
        if (r.t1 > t_last) t_last = r.t1;
    }
    printf("MARK end\n");
    if (!ok) { fprintf(stderr, "loadgen: a connect worker did not report\n"); tot.failed = 1; }
    failed = tot.failed;
    double el = ok ? t_last - t_first : 1e-9;
    printf("RESULT mode=connect conns=%d procs=%d connected=%d errors=%d elapsed=%.3f "
           "rate=%.0f cpu=%.3f cpu_pct=%.1f cpu_user_pct=%.1f failed=%d\n",
           o_conns, procs, tot.connected, tot.errors, el, tot.connected / el, tot.cpu,
           100.0 * tot.cpu / el, 100.0 * tot.ucpu / el, failed);
    printf("IDLE n=%d\n", tot.connected);
    fflush(stdout);
    if (ok) {
        char b[256];
        double hold_until = now_s() + o_hold;
        for (;;) {     /* wait for stdin EOF / 'q' */
            int ms = (int)((hold_until - now_s()) * 1000);
            if (ms <= 0) break;
            fd_set rs;
            FD_ZERO(&rs);
            FD_SET(0, &rs);
            struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
            int k = select(1, &rs, NULL, NULL, &tv);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) break;
            ssize_t r = read(0, b, sizeof b);
            if (r <= 0 || memchr(b, 'q', (size_t)r)) break;
        }
    }
    close(down[1]);     /* tells the workers to close their connections */
    dl = now_s() + 10;
    for (int k = 0; k < procs && ok; k++) {
        struct crec r;
        if (read_full(up[0], &r, sizeof r, dl) < 0) break;
        closed_idle += r.closed_idle;
    }
    printf("CLOSED_WHILE_IDLE n=%d\n", closed_idle);
    fflush(stdout);
    for (int k = 0; k < procs; k++) {
        for (int i = 0; i < 100; i++) {
            if (waitpid(kids[k], NULL, WNOHANG) != 0) break;
            if (i == 50) kill(kids[k], SIGKILL);
            usleep(20000);
        }
    }
    return failed;
}

/* ---- latency ---------------------------------------------------------------------- */
static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int run_latency(void) {
    o_pubs = 1; o_subs = 1; o_topology = 0; o_qos = 0;
    lat_cap = (size_t)(o_rate * (o_duration + 1)) + 1024;
    lat_ns = malloc(lat_cap * sizeof *lat_ns);
    t_start_ns = t_end_ns = UINT64_MAX;
    setup_clients();
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd < 0) die("timerfd_create");
    long period = 1000000000L / o_rate;
    struct itimerspec its = {.it_interval = {0, period}, .it_value = {0, period}};
    if (timerfd_settime(tfd, 0, &its, NULL) < 0) die("timerfd_settime");
    static conn tconn;          /* marker for the timer fd */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &tconn};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    uint64_t t0 = now_ns();
    t_start_ns = t0 + (uint64_t)(o_warmup * 1e9);
    t_end_ns = t_start_ns + (uint64_t)(o_duration * 1e9);
    uint64_t stop_ns = t_end_ns + (uint64_t)(o_drain * 1e9);
    int marked = 0;
    uint64_t sent_in_window = 0;
    double cpu0 = 0, cpu1 = 0;
    conn *pub = pubs[0], *sub = subs[0];
    for (;;) {
        uint64_t t = now_ns();
        if (marked == 0 && t >= t_start_ns) { marked = 1; cpu0 = cpu_s(); printf("MARK start\n"); fflush(stdout); }
        if (marked == 1 && t >= t_end_ns) { marked = 2; cpu1 = cpu_s(); printf("MARK end\n"); fflush(stdout); }
        if (marked == 2 && (last[0] >= pub->seq || t >= stop_ns)) break;
        if (pub->state == ST_CLOSED || sub->state == ST_CLOSED) { failed = 1; break; }
        struct epoll_event evs[16];
        int n = epoll_wait(ep, evs, 16, 100);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &tconn) {
                uint64_t exp = 0;
                if (read(tfd, &exp, 8) == 8 && t < t_end_ns) {
                    uint64_t ts = now_ns();
                    for (uint64_t k = 0; k < exp; k++) {
                        if (ts >= t_start_ns && ts < t_end_ns) sent_in_window++;
                        put_publish(pub, ts);
                    }
                    flush_out(pub);
                }
            } else {
                on_event(evs[i].data.ptr, evs[i].events);
            }
        }
    }
    if (cpu1 == 0) cpu1 = cpu_s();
    qsort(lat_ns, lat_n, sizeof *lat_ns, cmp_u64);
#define PCT(q) (lat_n ? lat_ns[(size_t)((q) * (lat_n - 1) + 0.5)] / 1000.0 : 0.0)
    printf("RESULT mode=latency rate=%d count=%zu sent=%llu lost=%lld p50_us=%.1f p90_us=%.1f "
           "p99_us=%.1f p999_us=%.1f max_us=%.1f cpu=%.3f cpu_pct=%.1f failed=%d\n",
           o_rate, lat_n, (unsigned long long)sent_in_window,
           (long long)sent_in_window - (long long)lat_n, PCT(0.50), PCT(0.90), PCT(0.99),
           PCT(0.999), lat_n ? lat_ns[lat_n - 1] / 1000.0 : 0.0, cpu1 - cpu0,
           100.0 * (cpu1 - cpu0) / o_duration, failed);
    fflush(stdout);
    return failed;
}

/* ---- main ------------------------------------------------------------------------- */
static void usage(void) {
    fprintf(stderr,
            "usage: loadgen pubsub|connect|latency [-H host] [-p port] [options]\n"
            "  --sub-port P: subscribers connect to port P (another cluster node)\n"
            "  --pub-port2 P: odd-numbered publishers connect to port P (publishers spread)\n"
            "  pubsub : --topology exact|fanout|fanin --pubs N --subs N -q 0|1 --payload B\n"
            "           --warmup S --duration S --window N --e2e-window N --drain S\n"
            "           --persistent-subs (subscribers connect with clean session off)\n"
            "  connect: -n N -c CONCURRENCY --hold S --timeout S --procs K --sources K\n"
            "           --ping-check\n"
            "  all    : --keepalive S (default 60, 0 = off)\n"
            "  pubsub, latency: --transport tcp|tls|ws|wss (default tcp), --ws-path P\n"
            "  latency: --rate N --warmup S --duration S\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const char *mode = argv[1];
    static struct option opts[] = {
        {"host", 1, 0, 'H'}, {"port", 1, 0, 'p'}, {"qos", 1, 0, 'q'},
        {"payload", 1, 0, 's'}, {"warmup", 1, 0, 'w'}, {"duration", 1, 0, 'd'},
        {"window", 1, 0, 'W'}, {"e2e-window", 1, 0, 'E'}, {"pubs", 1, 0, 'P'},
        {"subs", 1, 0, 'S'}, {"topology", 1, 0, 't'}, {"conns", 1, 0, 'n'},
        {"concurrency", 1, 0, 'c'}, {"hold", 1, 0, 'h'}, {"timeout", 1, 0, 'T'},
        {"rate", 1, 0, 'r'}, {"drain", 1, 0, 'D'}, {"keepalive", 1, 0, 'k'}, {"procs", 1, 0, 'j'},
        {"persistent-subs", 0, 0, 'R'}, {"sources", 1, 0, 'x'}, {"ping-check", 0, 0, 'K'},
        {"sub-port", 1, 0, 'u'}, {"transport", 1, 0, 'X'}, {"ws-path", 1, 0, 'Y'},
        {"pub-port2", 1, 0, 'v'},
        {0, 0, 0, 0}};
    int ch;
    optind = 2;
    while ((ch = getopt_long(argc, argv, "H:p:q:s:w:d:W:E:P:S:t:n:c:h:T:r:D:k:j:Rx:Ku:X:Y:v:", opts, NULL)) != -1) {
        switch (ch) {
        case 'H': o_host = optarg; break;
        case 'p': o_port = atoi(optarg); break;
        case 'q': o_qos = atoi(optarg); break;
        case 's': o_payload = atoi(optarg); break;
        case 'w': o_warmup = atof(optarg); break;
        case 'd': o_duration = atof(optarg); break;
        case 'W': o_window = atoi(optarg); break;
        case 'E': o_e2e = atoi(optarg); break;
        case 'P': o_pubs = atoi(optarg); break;
        case 'S': o_subs = atoi(optarg); break;
        case 't':
            if (!strcmp(optarg, "exact")) o_topology = 0;
            else if (!strcmp(optarg, "fanout")) o_topology = 1;
            else if (!strcmp(optarg, "fanin")) o_topology = 2;
            else usage();
            break;
        case 'n': o_conns = atoi(optarg); break;
        case 'c': o_conc = atoi(optarg); break;
        case 'h': o_hold = atof(optarg); break;
        case 'T': o_timeout = atof(optarg); break;
        case 'r': o_rate = atoi(optarg); break;
        case 'D': o_drain = atof(optarg); break;
        case 'k': o_keepalive = atoi(optarg); break;
        case 'j': o_procs = atoi(optarg); break;
        case 'R': o_persistent = 1; break;
        case 'x': o_sources = atoi(optarg); break;
        case 'K': o_pingcheck = 1; break;
        case 'u': o_sub_port = atoi(optarg); break;
        case 'X':
            if (!strcmp(optarg, "tcp")) o_transport = TR_TCP;
            else if (!strcmp(optarg, "tls")) o_transport = TR_TLS;
            else if (!strcmp(optarg, "ws")) o_transport = TR_WS;
            else if (!strcmp(optarg, "wss")) o_transport = TR_WSS;
            else usage();
            break;
        case 'Y': o_ws_path = optarg; break;
        case 'v': o_pub_port2 = atoi(optarg); break;
        default: usage();
        }
    }
    if (o_payload < 20) o_payload = 20;
    if (o_qos < 0 || o_qos > 1 || o_pubs < 1 || o_subs < 1 || o_window < 1 || o_e2e < 1 ||
        o_rate < 1 || o_rate > 1000000 || o_conc < 1 || o_conns < 1 ||
        o_keepalive < 0 || o_keepalive > 65535 || o_sources < 1 || o_sources > 254) usage();
    if (o_topology == 0 && o_pubs != o_subs) {
        fprintf(stderr, "loadgen: exact topology needs --pubs == --subs\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    snprintf(idprefix, sizeof idprefix, "lg%d-", (int)getpid());
    memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)o_port);
    if (inet_pton(AF_INET, o_host, &dst.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad host %s\n", o_host);
        return 2;
    }
    dst_sub = dst;
    if (o_sub_port) dst_sub.sin_port = htons((uint16_t)o_sub_port);
    dst_pub2 = dst;
    if (o_pub_port2) dst_pub2.sin_port = htons((uint16_t)o_pub_port2);
    if (o_transport != TR_TCP && !strcmp(mode, "connect")) {
        fprintf(stderr, "loadgen: connect mode is TCP only (bench/tlsload.py connects over "
                        "TLS and WebSocket)\n");
        return 2;
    }
#ifdef LOADGEN_TLS
    if (USE_TLS()) {
        tls_ctx = SSL_CTX_new(TLS_client_method());
        if (!tls_ctx) die("SSL_CTX_new");
        SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION);
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                  SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
#else
    if (USE_TLS()) {
        fprintf(stderr, "loadgen: built without TLS: gcc -O2 -DLOADGEN_TLS -o loadgen "
                        "loadgen.c -lssl -lcrypto (libssl-dev)\n");
        return 2;
    }
#endif
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    if (!strcmp(mode, "pubsub")) return run_pubsub();
    if (!strcmp(mode, "connect")) return run_connect();
    if (!strcmp(mode, "latency")) return run_latency();
    usage();
    return 2;
}
