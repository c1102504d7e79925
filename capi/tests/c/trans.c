/*
 * trans.c - one process of the transfer engine tests (SPEC 6.2), written against the SPEC API
 * only. Compiled as C99 and as C++11 by capi/tests/trans.rs, which runs the processes:
 *
 *   trans layout
 *       prints the C layout of smem_trans_config_t (checked against the Rust mirror).
 *   trans server URL ID DIR HOST_STORE
 *       creates engine ID (hosting the store when HOST_STORE is 1), allocates pool memory P
 *       (smem_trans_malloc, 16 MiB) and registers user memory U (16 MiB) and R (64 KiB),
 *       publishes "P U R" in DIR/ID.addr, then serves: on DIR/dereg.req it deregisters R and
 *       answers DIR/dereg.done; on DIR/ID.stop it checks the bytes the client left in P and U,
 *       destroys the engine and exits 0.
 *   trans client URL ID PEER DIR
 *       every call of smem_trans.h against PEER (sync, batch, submit + wait, reads back and
 *       compares every byte) and every refusal, then asks PEER to check and stop.
 *   trans victim URL ID DIR
 *       creates engine ID with P and U, publishes them, and waits to be killed.
 *   trans killer URL ID PEER DIR pool|user DIR2
 *       hosts the store, batch-writes 256 x 16 KiB into PEER's P or U in a loop, printing
 *       "looping" after the first success, until a call fails: that must be SM_IO_ERROR naming
 *       PEER (it prints how long the call took). Then a new engine under PEER's id (a server
 *       publishing in DIR2) must be found and written; exits 0 when all that held, 1 otherwise,
 *       3 when nothing failed within 60 s.
 *   trans benchserver URL ID DIR
 *       a server (hosting the store) for the benchmark: no byte checks at the end.
 *   trans bench URL ID PEER DIR
 *       benchmark client (see capi/benches/trans.rs): prints "bench NAME VALUE" lines.
 *
 * Synchronisation goes through files in DIR (written whole, then renamed) and the store (a
 * peer is looked up until it appears); every wait has a deadline.
 */
#define _POSIX_C_SOURCE 200809L

#include "smem.h"
#include "smem_bm.h"
#include "smem_trans.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define KIB (1024ull)
#define MIB (1024ull * 1024ull)
#define POOL (16 * MIB)
#define RLEN (64 * KIB)
#define WAIT_S 60.0

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec t;
    t.tv_sec = ms / 1000;
    t.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&t, NULL);
}

static int fails = 0;
static int bench_server = 0; /* the server of a benchmark: no byte checks at the end */

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                           \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, " (last error: %s)\n", smem_get_last_err_msg());               \
            fails++;                                                                       \
        }                                                                                  \
    } while (0)

#define DIE(...)                                                                           \
    do {                                                                                   \
        fprintf(stderr, __VA_ARGS__);                                                      \
        fprintf(stderr, " (last error: %s)\n", smem_get_last_err_msg());                   \
        exit(1);                                                                           \
    } while (0)

static void put_file(const char *dir, const char *name, const char *text)
{
    char path[512], tmp[520];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = fopen(tmp, "w");
    if (f == NULL) DIE("cannot write %s", tmp);
    fputs(text, f);
    fclose(f);
    if (rename(tmp, path) != 0) DIE("cannot rename %s", tmp);
}

/* Waits (up to WAIT_S) for DIR/NAME; returns its first line in buf. */
static int get_file(const char *dir, const char *name, char *buf, size_t len)
{
    char path[512];
    double until = now_s() + WAIT_S;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    while (now_s() < until) {
        FILE *f = fopen(path, "r");
        if (f != NULL) {
            char *ok = fgets(buf, (int)len, f);
            fclose(f);
            if (ok != NULL) return 0;
        }
        sleep_ms(10);
    }
    return -1;
}

static uint8_t pattern(uint64_t i, unsigned seed)
{
    return (uint8_t)((i * 131u + seed * 7u + (i >> 12)) & 0xff);
}

static void fill(uint8_t *p, uint64_t n, unsigned seed)
{
    uint64_t i;
    for (i = 0; i < n; i++) p[i] = pattern(i, seed);
}

static int same(const uint8_t *p, uint64_t n, unsigned seed)
{
    uint64_t i;
    for (i = 0; i < n; i++)
        if (p[i] != pattern(i, seed)) return 0;
    return 1;
}

static void config(smem_trans_config_t *c, uint32_t timeout, int host_store)
{
    if (smem_trans_config_init(c) != SM_OK) DIE("smem_trans_config_init");
    c->initTimeout = timeout;
    c->startConfigServer = host_store ? true : false;
}

static smem_trans_t start(const char *url, const char *id, uint32_t timeout, int host_store)
{
    smem_trans_config_t c;
    smem_trans_t h;
    config(&c, timeout, host_store);
    if (smem_trans_init(&c) != SM_OK) DIE("smem_trans_init");
    h = smem_trans_create(url, id, &c);
    if (h == NULL) DIE("smem_trans_create(%s, %s)", url, id);
    return h;
}

static void *xalloc(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 4096, n) != 0) DIE("posix_memalign");
    memset(p, 0, n);
    return p;
}

/* ---- raw TCP baseline (benchmark) ---- */

#define RAW_CHUNK (16 * MIB)

/* The benchmark server's raw TCP sink: reads RAW_CHUNK bytes, answers one byte, repeats. */
static void *raw_sink(void *arg)
{
    int l = *(int *)arg;
    int s = accept(l, NULL, NULL);
    uint8_t *buf = (uint8_t *)malloc(RAW_CHUNK);
    if (s < 0 || buf == NULL) return NULL;
    for (;;) {
        uint64_t got = 0;
        while (got < RAW_CHUNK) {
            ssize_t n = recv(s, buf + got, RAW_CHUNK - got, 0);
            if (n <= 0) {
                close(s);
                free(buf);
                return NULL;
            }
            got += (uint64_t)n;
        }
        if (send(s, "k", 1, MSG_NOSIGNAL) != 1) break;
    }
    close(s);
    free(buf);
    return NULL;
}

/* Starts the raw sink on 127.0.0.1, port 0; returns the port. */
static int raw_listen(void)
{
    static int l;
    static pthread_t t;
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 1) != 0 ||
        getsockname(l, (struct sockaddr *)&a, &len) != 0)
        DIE("raw sink socket");
    if (pthread_create(&t, NULL, raw_sink, &l) != 0) DIE("raw sink thread");
    pthread_detach(t);
    return ntohs(a.sin_port);
}

static int raw_connect(int port)
{
    struct sockaddr_in a;
    int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) DIE("raw connect");
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return s;
}

/* Seconds to stream RAW_CHUNK bytes of `src` and get the sink's one-byte answer. */
static double raw_round(int s, const uint8_t *src)
{
    double t0 = now_s();
    uint64_t sent = 0;
    char ack;
    while (sent < RAW_CHUNK) {
        ssize_t n = send(s, src + sent, RAW_CHUNK - sent, MSG_NOSIGNAL);
        if (n <= 0) DIE("raw send");
        sent += (uint64_t)n;
    }
    if (recv(s, &ack, 1, MSG_WAITALL) != 1) DIE("raw ack");
    return now_s() - t0;
}

/* ---- server / victim ---- */

static int serve(const char *url, const char *id, const char *dir, int host_store, int victim)
{
    smem_trans_t h = start(url, id, 60, host_store);
    uint8_t *p = (uint8_t *)smem_trans_malloc(h, POOL);
    uint8_t *u = (uint8_t *)xalloc(POOL);
    uint8_t *r = (uint8_t *)xalloc(RLEN);
    char buf[256], name[160];
    double until = now_s() + 120.0;
    if (p == NULL) DIE("smem_trans_malloc");
    CHECK(((uintptr_t)p & 4095u) == 0, "pool memory is page aligned");
    if (smem_trans_register_mem(h, u, POOL, 0) != SM_OK) DIE("register U");
    if (!victim && smem_trans_register_mem(h, r, RLEN, 0) != SM_OK) DIE("register R");
    fill(p, POOL, 1);
    fill(u, POOL, 2);
    snprintf(buf, sizeof buf, "%p %p %p %d\n", (void *)p, (void *)u, (void *)r,
             bench_server ? raw_listen() : 0);
    snprintf(name, sizeof name, "%s.addr", id);
    put_file(dir, name, buf);
    printf("serving\n");
    fflush(stdout);
    snprintf(name, sizeof name, "%s/%s.stop", dir, id);
    while (now_s() < until) {
        char path[512];
        snprintf(path, sizeof path, "%s/dereg.req", dir);
        if (!victim && access(path, F_OK) == 0 && access(name, F_OK) != 0) {
            char done[512];
            snprintf(done, sizeof done, "%s/dereg.done", dir);
            if (access(done, F_OK) != 0) {
                CHECK(smem_trans_deregister_mem(h, r) == SM_OK, "deregister R");
                put_file(dir, "dereg.done", "ok\n");
            }
        }
        if (access(name, F_OK) == 0) break;
        sleep_ms(5);
    }
    if (victim) DIE("victim was not killed within 120 s");
    if (now_s() >= until) DIE("no stop request within 120 s");
    /* The client's final writes: P[0, 1 MiB) = seed 11, U[0, 1 MiB) = seed 12. */
    if (!bench_server) {
        CHECK(same(p, MIB, 11), "client's write into pool memory arrived");
        CHECK(same(u, MIB, 12), "client's write into user memory arrived");
    }
    CHECK(smem_trans_free(h, p) == SM_OK, "free P");
    CHECK(smem_trans_deregister_mem(h, u) == SM_OK, "deregister U");
    smem_trans_destroy(h, 0);
    smem_trans_uninit(0);
    free(u);
    free(r);
    printf("%s\n", fails ? "server FAILED" : "server ok");
    return fails ? 1 : 0;
}

/* ---- client ---- */

static int code_is(int32_t rc, int32_t want, const char *needle, const char *what)
{
    const char *msg = smem_get_last_err_msg();
    if (rc != want) {
        fprintf(stderr, "FAIL %s: rc %d, want %d (last error: %s)\n", what, rc, want, msg);
        fails++;
        return 0;
    }
    if (needle != NULL && strstr(msg, needle) == NULL) {
        fprintf(stderr, "FAIL %s: message lacks \"%s\": %s\n", what, needle, msg);
        fails++;
        return 0;
    }
    return 1;
}

/* Round trip through the peer's range at `remote` (len bytes) with every form. */
static void round_trips(smem_trans_t h, const char *peer, uint8_t *remote, uint64_t len,
                        unsigned seed, const char *what)
{
    enum { N = 64 };
    uint64_t piece = len / N;
    uint8_t *src = (uint8_t *)xalloc(len), *dst = (uint8_t *)xalloc(len);
    const void *lsrc[N];
    void *ldst[N];
    void *rdst[N];
    const void *rsrc[N];
    size_t sizes[N];
    int i;
    /* single sync */
    fill(src, 4 * KIB, seed);
    CHECK(smem_trans_write(h, src, peer, remote, 4 * KIB, 0) == SM_OK, "%s: write", what);
    CHECK(smem_trans_read(h, dst, peer, remote, 4 * KIB, 0) == SM_OK, "%s: read", what);
    CHECK(same(dst, 4 * KIB, seed), "%s: read back the write", what);
    /* batch sync, entries in reverse order (nothing to coalesce) */
    fill(src, len, seed + 1);
    memset(dst, 0, len);
    for (i = 0; i < N; i++) {
        int j = N - 1 - i;
        lsrc[i] = src + (uint64_t)j * piece;
        rdst[i] = remote + (uint64_t)j * piece;
        ldst[i] = dst + (uint64_t)j * piece;
        rsrc[i] = remote + (uint64_t)j * piece;
        sizes[i] = (size_t)piece;
    }
    CHECK(smem_trans_batch_write(h, lsrc, peer, rdst, sizes, N, 0) == SM_OK, "%s: batch_write", what);
    CHECK(smem_trans_batch_read(h, ldst, peer, rsrc, sizes, N, 0) == SM_OK, "%s: batch_read", what);
    CHECK(same(dst, len, seed + 1), "%s: batch read back", what);
    /* submit + wait */
    fill(src, len, seed + 2);
    memset(dst, 0, len);
    CHECK(smem_trans_write_submit(h, src, peer, remote, 4 * KIB, NULL, 0) == SM_OK, "%s: write_submit", what);
    CHECK(smem_trans_batch_write_submit(h, lsrc, peer, rdst, sizes, N, NULL, 0) == SM_OK,
          "%s: batch_write_submit", what);
    CHECK(smem_trans_wait(h) == SM_OK, "%s: wait after writes", what);
    CHECK(smem_trans_read_submit(h, dst, peer, remote, 4 * KIB, NULL, 0) == SM_OK, "%s: read_submit", what);
    CHECK(smem_trans_batch_read_submit(h, ldst, peer, rsrc, sizes, N, NULL, 0) == SM_OK,
          "%s: batch_read_submit", what);
    CHECK(smem_trans_wait(h) == SM_OK, "%s: wait after reads", what);
    CHECK(same(dst, len, seed + 2), "%s: submitted reads read back", what);
    CHECK(smem_trans_wait(h) == SM_OK, "%s: wait with nothing pending", what);
    free(src);
    free(dst);
}

static int client(const char *url, const char *id, const char *peer, const char *dir)
{
    smem_trans_config_t c;
    smem_trans_t h, dup;
    uint8_t *p, *u, *r, *mine;
    char buf[256], name[160], hex[64];
    uint8_t local[4096];
    int32_t rc;
    double t0;
    void *stream = (void *)local;

    /* Refusals before init. */
    config(&c, 3, 0);
    CHECK(smem_trans_create(url, id, &c) == NULL, "create before init");
    CHECK(strstr(smem_get_last_err_msg(), "smem_trans_init") != NULL, "create before init says why");
    c.role = SMEM_TRANS_NONE;
    code_is(smem_trans_init(&c), SM_INVALID_PARAM, "role", "init with role NONE");
    c.role = SMEM_TRANS_BUTT;
    code_is(smem_trans_init(&c), SM_INVALID_PARAM, "role", "init with role BUTT");
    config(&c, 3, 0);
    c.flags = 1;
    code_is(smem_trans_init(&c), SM_INVALID_PARAM, "flags", "init with flags");
    config(&c, 3, 0);
    c.dataOpType = (smem_bm_data_op_type)0;
    code_is(smem_trans_init(&c), SM_INVALID_PARAM, "dataOpType", "init with no data operation");
    c.dataOpType = (smem_bm_data_op_type)(1u << 7);
    code_is(smem_trans_init(&c), SM_INVALID_PARAM, "dataOpType", "init with an unknown data operation");
    config(&c, 3, 0);
    c.initTimeout = 0;
    code_is(smem_trans_init(&c), SM_INVALID_PARAM, "initTimeout", "init with initTimeout 0");
    code_is(smem_trans_init(NULL), SM_INVALID_PARAM, "config", "init with NULL");
    code_is(smem_trans_config_init(NULL), SM_INVALID_PARAM, "config", "config_init NULL");

    snprintf(name, sizeof name, "%s.addr", peer);
    if (get_file(dir, name, buf, sizeof buf) != 0) DIE("no %s within %.0f s", name, WAIT_S);
    if (sscanf(buf, "%p %p %p", (void **)&p, (void **)&u, (void **)&r) != 3) DIE("bad %s", buf);

    h = start(url, id, 3, 0);
    config(&c, 3, 0);
    c.initTimeout = 9;
    code_is(smem_trans_init(&c), SM_REPEAT_CALL, NULL, "init again with other settings");
    config(&c, 3, 0);
    CHECK(smem_trans_init(&c) == SM_OK, "init again with the same settings");

    /* Every call, into pool memory (mapped on one host) and registered user memory. */
    round_trips(h, peer, p + MIB, 4 * MIB, 3, "pool");
    round_trips(h, peer, u + MIB, 4 * MIB, 5, "user");

    /* Local memory of this engine: malloc / free / register / batch register / deregister. */
    mine = (uint8_t *)smem_trans_malloc(h, 5000);
    CHECK(mine != NULL && ((uintptr_t)mine & 4095u) == 0, "malloc 5000 bytes, page aligned");
    CHECK(smem_trans_register_mem(h, mine + 100, 100, 0) == SM_OK, "register inside malloc memory");
    code_is(smem_trans_deregister_mem(h, mine), SM_INVALID_PARAM, "smem_trans_free",
            "deregister of malloc memory");
    CHECK(smem_trans_free(h, mine) == SM_OK, "free");
    code_is(smem_trans_free(h, mine), SM_OBJECT_NOT_EXISTS, NULL, "free twice");
    CHECK(smem_trans_malloc(h, 0) == NULL, "malloc 0 refused");
    CHECK(strstr(smem_get_last_err_msg(), "capacity is 0") != NULL, "malloc 0 says why");
    {
        uint8_t *a = (uint8_t *)xalloc(64 * KIB);
        void *addrs[3];
        size_t caps[3];
        addrs[0] = a;
        caps[0] = 4096;
        addrs[1] = a + 8192;
        caps[1] = 4096;
        addrs[2] = a + 4096 + 100; /* overlaps nothing yet */
        caps[2] = 100;
        CHECK(smem_trans_batch_register_mem(h, addrs, caps, 3, 0) == SM_OK, "batch register");
        code_is(smem_trans_register_mem(h, a + 4000, 200, 0), SM_INVALID_PARAM, "overlaps",
                "register overlapping");
        addrs[2] = a + 8192 + 10;
        code_is(smem_trans_batch_register_mem(h, addrs, caps, 3, 0), SM_INVALID_PARAM, "entry",
                "batch register overlapping");
        code_is(smem_trans_batch_register_mem(h, addrs, caps, 0, 0), SM_INVALID_PARAM, "count",
                "batch register count 0");
        code_is(smem_trans_batch_register_mem(h, NULL, caps, 3, 0), SM_INVALID_PARAM, "addresses",
                "batch register NULL array");
        code_is(smem_trans_register_mem(h, NULL, 10, 0), SM_INVALID_PARAM, NULL, "register NULL");
        code_is(smem_trans_register_mem(h, a + 30000, 10, 1), SM_INVALID_PARAM, "flags",
                "register with flags");
        CHECK(smem_trans_deregister_mem(h, a) == SM_OK, "deregister");
        CHECK(smem_trans_deregister_mem(h, a + 8192) == SM_OK, "deregister 2");
        CHECK(smem_trans_deregister_mem(h, a + 4096 + 100) == SM_OK, "deregister 3");
        code_is(smem_trans_deregister_mem(h, a), SM_OBJECT_NOT_EXISTS, NULL, "deregister twice");
        free(a);
    }

    /* Refusals of transfers. */
    snprintf(hex, sizeof hex, "%p", (void *)(p + POOL));
    code_is(smem_trans_write(h, local, peer, p + POOL, 16, 0), SM_INVALID_PARAM, peer,
            "write past the pool memory (names the peer)");
    code_is(smem_trans_write(h, local, peer, p + POOL, 16, 0), SM_INVALID_PARAM, hex + 2,
            "write past the pool memory (names the address)");
    code_is(smem_trans_read(h, local, peer, u + POOL - 8, 16, 0), SM_INVALID_PARAM, peer,
            "read crossing the end of user memory");
    code_is(smem_trans_write(h, local, peer, p, 0, 0), SM_INVALID_PARAM, "dataSize", "size 0");
    code_is(smem_trans_write(h, NULL, peer, p, 16, 0), SM_INVALID_PARAM, "local", "NULL local");
    code_is(smem_trans_write(h, local, NULL, p, 16, 0), SM_INVALID_PARAM, "remoteUniqueId", "NULL peer");
    code_is(smem_trans_write(NULL, local, peer, p, 16, 0), SM_INVALID_PARAM, "handle", "NULL handle");
    code_is(smem_trans_write(h, local, peer, p, 16, 4), SM_INVALID_PARAM, "flags", "flags");
    code_is(smem_trans_write_submit(h, local, peer, p, 16, stream, 0), SM_NOT_SUPPORTED, "stream",
            "write_submit with a stream");
    code_is(smem_trans_batch_read_submit(h, NULL, peer, NULL, NULL, 1, stream, 0), SM_NOT_SUPPORTED,
            "stream", "batch_read_submit with a stream");
    code_is(smem_trans_batch_write(h, NULL, peer, NULL, NULL, 0, 0), SM_INVALID_PARAM, "batchSize",
            "batch of 0");
    {
        const void *ls[2];
        void *rs[2];
        size_t ss[2];
        uint8_t before[16], after[16];
        CHECK(smem_trans_read(h, before, peer, p + 2 * MIB, 16, 0) == SM_OK, "read before the bad batch");
        memset(local, 0xee, sizeof local);
        ls[0] = local;
        ls[1] = local;
        rs[0] = p + 2 * MIB;
        rs[1] = p + POOL - 1;
        ss[0] = 16;
        ss[1] = 16;
        code_is(smem_trans_batch_write(h, ls, peer, rs, ss, 2, 0), SM_INVALID_PARAM, "entry 1",
                "batch with a bad second entry");
        CHECK(smem_trans_read(h, after, peer, p + 2 * MIB, 16, 0) == SM_OK, "read after the bad batch");
        CHECK(memcmp(before, after, 16) == 0, "a refused batch moved no byte");
    }
    t0 = now_s();
    code_is(smem_trans_write(h, local, "nobody-here", p, 16, 0), SM_OBJECT_NOT_EXISTS, "nobody-here",
            "unknown peer");
    CHECK(now_s() - t0 >= 2.5 && now_s() - t0 < 30.0, "unknown peer waited about initTimeout (%.1f s)",
          now_s() - t0);
    code_is(smem_trans_write_submit(h, local, "nobody-here", p, 16, NULL, 0), SM_OBJECT_NOT_EXISTS,
            "nobody-here", "unknown peer (submit)");
    config(&c, 3, 0);
    dup = smem_trans_create(url, peer, &c);
    CHECK(dup == NULL, "duplicate id refused");
    CHECK(strstr(smem_get_last_err_msg(), "already live") != NULL &&
              strstr(smem_get_last_err_msg(), peer) != NULL,
          "duplicate id: the message names the id");
    CHECK(smem_trans_create(url, "bad\tid", &c) == NULL, "unprintable id refused");
    CHECK(strstr(smem_get_last_err_msg(), "uniqueId") != NULL, "unprintable id: says why");

    /* A range the peer deregisters is refused from then on. */
    fill(local, sizeof local, 9);
    CHECK(smem_trans_write(h, local, peer, r, sizeof local, 0) == SM_OK, "write into R");
    put_file(dir, "dereg.req", "go\n");
    if (get_file(dir, "dereg.done", buf, sizeof buf) != 0) DIE("peer did not deregister R");
    rc = smem_trans_write(h, local, peer, r, sizeof local, 0);
    code_is(rc, SM_INVALID_PARAM, peer, "write into a deregistered range");

    /* Final bytes the server checks. */
    {
        uint8_t *src = (uint8_t *)xalloc(MIB);
        fill(src, MIB, 11);
        CHECK(smem_trans_write(h, src, peer, p, MIB, 0) == SM_OK, "final write P");
        fill(src, MIB, 12);
        CHECK(smem_trans_write(h, src, peer, u, MIB, 0) == SM_OK, "final write U");
        free(src);
    }
    snprintf(name, sizeof name, "%s.stop", peer);
    put_file(dir, name, "stop\n");
    smem_trans_destroy(h, 0);
    code_is(smem_trans_write(h, local, peer, p, 16, 0), SM_OBJECT_NOT_EXISTS, NULL, "destroyed handle");
    smem_trans_uninit(0);
    printf("%s\n", fails ? "client FAILED" : "client ok");
    return fails ? 1 : 0;
}

/* ---- killer ---- */

/* After the victim died: a new engine under the same id (started by the driver, publishing in
   DIR2) is looked up again and written; it checks the bytes and stops. */
static int restarted(smem_trans_t h, const char *peer, const char *dir2)
{
    uint8_t *p, *u, *r, *src;
    char buf[256], name[160];
    int ok;
    snprintf(name, sizeof name, "%s.addr", peer);
    if (get_file(dir2, name, buf, sizeof buf) != 0) DIE("no restarted %s", name);
    if (sscanf(buf, "%p %p %p", (void **)&p, (void **)&u, (void **)&r) != 3) DIE("bad %s", buf);
    src = (uint8_t *)xalloc(MIB);
    fill(src, MIB, 11);
    ok = smem_trans_write(h, src, peer, p, MIB, 0) == SM_OK;
    fill(src, MIB, 12);
    ok = ok && smem_trans_write(h, src, peer, u, MIB, 0) == SM_OK;
    printf("%s\n", ok ? "restarted peer written" : "restarted peer NOT written");
    if (!ok) fprintf(stderr, "restarted peer: %s\n", smem_get_last_err_msg());
    snprintf(name, sizeof name, "%s.stop", peer);
    put_file(dir2, name, "stop\n");
    /* It frees its memory and destroys its engine (we host the store it needs for that):
       writes into it fail from then on. */
    {
        double until = now_s() + WAIT_S;
        int32_t rc = SM_OK;
        while (rc != SM_IO_ERROR && rc != SM_OBJECT_NOT_EXISTS && now_s() < until) {
            rc = smem_trans_write(h, src, peer, u + 2 * MIB, 16, 0);
            if (rc == SM_OK || rc == SM_INVALID_PARAM) sleep_ms(5); /* not yet / range withdrawn */
        }
        printf("after its stop: rc=%d %s\n", rc, smem_get_last_err_msg());
        ok = ok && (rc == SM_IO_ERROR || rc == SM_OBJECT_NOT_EXISTS);
    }
    free(src);
    return ok;
}

static int killer(const char *url, const char *id, const char *peer, const char *dir, int pool,
                  const char *dir2)
{
    enum { N = 256 };
    smem_trans_t h;
    uint8_t *p, *u, *r, *dst, *src;
    const void *ls[N];
    void *rs[N];
    size_t ss[N];
    char buf[256], name[160];
    double until;
    long ok = 0;
    int i;
    snprintf(name, sizeof name, "%s.addr", peer);
    h = start(url, id, 20, 1);
    if (get_file(dir, name, buf, sizeof buf) != 0) DIE("no %s", name);
    if (sscanf(buf, "%p %p %p", (void **)&p, (void **)&u, (void **)&r) != 3) DIE("bad %s", buf);
    dst = pool ? p : u;
    src = (uint8_t *)xalloc(N * 16 * KIB);
    for (i = 0; i < N; i++) {
        ls[i] = src + (uint64_t)i * 16 * KIB;
        rs[i] = dst + (uint64_t)i * 16 * KIB;
        ss[i] = 16 * KIB;
    }
    until = now_s() + 60.0;
    while (now_s() < until) {
        double t0 = now_s();
        int32_t rc = smem_trans_batch_write(h, ls, peer, rs, ss, N, 0);
        double ms = (now_s() - t0) * 1e3;
        if (rc == SM_OK) {
            if (ok++ == 0) {
                printf("looping\n");
                fflush(stdout);
            }
            continue;
        }
        printf("failed rc=%d ms=%.1f after %ld batches: %s\n", rc, ms, ok, smem_get_last_err_msg());
        fflush(stdout);
        if (rc != SM_IO_ERROR || strstr(smem_get_last_err_msg(), peer) == NULL) return 1;
        if (!restarted(h, peer, dir2)) return 1;
        smem_trans_destroy(h, 0);
        smem_trans_uninit(0);
        return 0;
    }
    printf("nothing failed within 60 s\n");
    return 3;
}

/* ---- bench ---- */

static double gbps(uint64_t bytes, double s)
{
    return (double)bytes / s / 1e9;
}

static double median(double *v, int n)
{
    int a, b;
    for (a = 1; a < n; a++) {
        double x = v[a];
        for (b = a - 1; b >= 0 && v[b] > x; b--) v[b + 1] = v[b];
        v[b + 1] = x;
    }
    return v[n / 2];
}

/* Median seconds of `rounds` batch writes of N entries to `rs`. */
static double time_batch(smem_trans_t h, const char *peer, const void **ls, void **rs, size_t *ss,
                         int n, int rounds)
{
    double t[64];
    int k;
    for (k = 0; k < rounds; k++) {
        double t0 = now_s();
        if (smem_trans_batch_write(h, ls, peer, rs, ss, (uint32_t)n, 0) != SM_OK) DIE("batch write");
        t[k] = now_s() - t0;
    }
    return median(t, rounds);
}

static double time_4k(smem_trans_t h, const char *peer, const uint8_t *src, uint8_t *remote)
{
    double t[401];
    int k;
    for (k = 0; k < 401; k++) {
        double t0 = now_s();
        if (smem_trans_write(h, src, peer, remote, 4 * KIB, 0) != SM_OK) DIE("4 KiB write");
        t[k] = now_s() - t0;
    }
    return median(t, 401);
}

/*
 * 1024 x 16 KiB batch writes into the peer's pool memory and registered user memory, each
 * as contiguous entries (coalesced) and as scattered ones (every second 16 KiB block, in
 * reverse order: nothing to coalesce), next to a memcpy loop over the same entries (local
 * buffer to local buffer) and a raw loopback TCP stream of the same 16 MiB into the server
 * process (acknowledged by one byte once all arrived), all medians of ROUNDS, interleaved;
 * then 4 KiB write latency.
 */
static int bench(const char *url, const char *id, const char *peer, const char *dir)
{
    enum { N = 1024, ROUNDS = 15 };
    const uint64_t entry = 16 * KIB;
    smem_trans_t h;
    uint8_t *p, *u, *r, *src, *copy;
    static const void *ls[N];
    static void *rp[N], *ru[N], *sp[N], *su[N];
    static size_t ss[N];
    char buf[256], name[160];
    double mc[ROUNDS], raw[ROUNDS], pool, user, spool, suser;
    int i, k, port, rs;
    snprintf(name, sizeof name, "%s.addr", peer);
    if (get_file(dir, name, buf, sizeof buf) != 0) DIE("no %s", name);
    if (sscanf(buf, "%p %p %p %d", (void **)&p, (void **)&u, (void **)&r, &port) != 4) DIE("bad %s", buf);
    h = start(url, id, 30, 0);
    src = (uint8_t *)xalloc(N * entry);
    copy = (uint8_t *)xalloc(N * entry);
    fill(src, N * entry, 4);
    for (i = 0; i < N; i++) {
        ls[i] = src + (uint64_t)i * entry;
        rp[i] = p + (uint64_t)i * entry;
        ru[i] = u + (uint64_t)i * entry;
        /* scattered: reverse order, so no two entries are contiguous on both sides */
        sp[i] = p + (uint64_t)(N - 1 - i) * entry;
        su[i] = u + (uint64_t)(N - 1 - i) * entry;
        ss[i] = (size_t)entry;
    }
    rs = raw_connect(port);
    (void)raw_round(rs, src);
    (void)raw_round(rs, src);
    /* warm up every path (maps the peer's memory, opens connections) */
    (void)time_batch(h, peer, ls, rp, ss, N, 2);
    (void)time_batch(h, peer, ls, ru, ss, N, 2);
    (void)time_batch(h, peer, ls, sp, ss, N, 2);
    (void)time_batch(h, peer, ls, su, ss, N, 2);
    {
        double tp[ROUNDS], tu[ROUNDS], tsp[ROUNDS], tsu[ROUNDS];
        for (k = 0; k < ROUNDS; k++) {
            double t0 = now_s();
            for (i = 0; i < N; i++) memcpy(copy + (uint64_t)(N - 1 - i) * entry, ls[i], entry);
            mc[k] = now_s() - t0;
            raw[k] = raw_round(rs, src);
            tp[k] = time_batch(h, peer, ls, rp, ss, N, 1);
            tu[k] = time_batch(h, peer, ls, ru, ss, N, 1);
            tsp[k] = time_batch(h, peer, ls, sp, ss, N, 1);
            tsu[k] = time_batch(h, peer, ls, su, ss, N, 1);
        }
        pool = median(tp, ROUNDS);
        user = median(tu, ROUNDS);
        spool = median(tsp, ROUNDS);
        suser = median(tsu, ROUNDS);
    }
    close(rs);
    printf("bench memcpy %.3f\n", gbps(N * entry, median(mc, ROUNDS)));
    printf("bench raw_tcp %.3f\n", gbps(N * entry, median(raw, ROUNDS)));
    printf("bench pool %.3f\n", gbps(N * entry, pool));
    printf("bench user %.3f\n", gbps(N * entry, user));
    printf("bench pool_scattered %.3f\n", gbps(N * entry, spool));
    printf("bench user_scattered %.3f\n", gbps(N * entry, suser));
    printf("bench lat4k_pool_us %.1f\n", time_4k(h, peer, src, p) * 1e6);
    printf("bench lat4k_user_us %.1f\n", time_4k(h, peer, src, u) * 1e6);
    snprintf(name, sizeof name, "%s.stop", peer);
    put_file(dir, name, "stop\n");
    smem_trans_destroy(h, 0);
    smem_trans_uninit(0);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && strcmp(argv[1], "layout") == 0) {
        printf("layout smem_trans_config_t.size %u\n", (unsigned)sizeof(smem_trans_config_t));
        printf("layout smem_trans_config_t.role %u\n", (unsigned)offsetof(smem_trans_config_t, role));
        printf("layout smem_trans_config_t.initTimeout %u\n",
               (unsigned)offsetof(smem_trans_config_t, initTimeout));
        printf("layout smem_trans_config_t.deviceId %u\n", (unsigned)offsetof(smem_trans_config_t, deviceId));
        printf("layout smem_trans_config_t.flags %u\n", (unsigned)offsetof(smem_trans_config_t, flags));
        printf("layout smem_trans_config_t.dataOpType %u\n",
               (unsigned)offsetof(smem_trans_config_t, dataOpType));
        printf("layout smem_trans_config_t.startConfigServer %u\n",
               (unsigned)offsetof(smem_trans_config_t, startConfigServer));
        printf("layout smem_trans_role_t.size %u\n", (unsigned)sizeof(smem_trans_role_t));
        return 0;
    }
    if (argc == 6 && strcmp(argv[1], "server") == 0)
        return serve(argv[2], argv[3], argv[4], atoi(argv[5]), 0);
    if (argc == 5 && strcmp(argv[1], "benchserver") == 0) {
        bench_server = 1;
        return serve(argv[2], argv[3], argv[4], 1, 0);
    }
    if (argc == 5 && strcmp(argv[1], "victim") == 0) return serve(argv[2], argv[3], argv[4], 0, 1);
    if (argc == 6 && strcmp(argv[1], "client") == 0) return client(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 8 && strcmp(argv[1], "killer") == 0)
        return killer(argv[2], argv[3], argv[4], argv[5], strcmp(argv[6], "pool") == 0, argv[7]);
    if (argc == 6 && strcmp(argv[1], "bench") == 0) return bench(argv[2], argv[3], argv[4], argv[5]);
    fprintf(stderr, "usage: see the comment at the top of trans.c\n");
    return 2;
}
