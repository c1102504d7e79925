/*
 * bm_multirank.c - one rank of a multi-process BM test, written against the SPEC API only.
 *
 *   bm_multirank RANK WORLD_SIZE PORT
 *
 * Driven by capi/tests/bm_multirank.rs, which starts WORLD_SIZE copies (SMEM_DEVICE=sim, or
 * SMEM_DEVICE=acl over the stub libascendcl.so of platform-linux/tests/acl_stub, whose "device
 * memory" is host memory too, so host buffers serve as L2G sources / G2L targets), each
 * with a deadline, and kills all of them when one fails. Rank 0 hosts the config store
 * (startConfigStore, the default) at tcp://127.0.0.1:PORT, or at tcp://$SMEM_TEST_STORE_HOST:PORT
 * when that IPv4 address is set (ranks in network namespaces joined by a veth pair).
 *
 * Object 0: every rank contributes HBM 1 B (rounded to 2 MiB) and DRAM 3 MiB + 1 (rounded to
 * 4 MiB). Window layout (SPEC 2.2): HBM part at the window start, DRAM part after it.
 *   HBM  [0, 64K)             owner-only guard (crossing checks must not touch it)
 *   HBM  [64K + w*64K, +64K)  slot written by rank w with L2G
 *   HBM  [1M + w*64K, +64K)   2D region written by rank w (H2G/G2H, then L2G/G2L)
 *   HBM  [2M - 64K, 2M)       owner-only guard
 *   DRAM [0, 64K)             owner-only guard
 *   DRAM [64K + w*64K, +64K)  slot written by rank w with H2G
 *   DRAM [1M + w*64K, +64K)   2D region written by rank w with copy_2d
 *   DRAM [2M, 2M + 8)         the owner's phase flag (written last in each phase)
 *   DRAM [3M, 3M + 4K)        scratch for the leave check
 *   DRAM [4M - 64K, 4M)       owner-only guard (its last byte is the window's last byte)
 *
 * Synchronisation uses the API only: BM has no barrier, so each rank publishes a phase number
 * in its own flag word after its copies of that phase returned (a returned copy is complete and
 * visible, SPEC 2.2), and peers poll the flag with G2H until it reaches the phase, with a
 * deadline. Copies to a peer that has not joined yet fail cleanly (unjoined window) and are
 * retried until the deadline: a failed copy touches no byte.
 *
 * Phases: 1 = all data written + crossing attempts done; 2 = all verification done; then a
 * teardown handshake through rank 0's flag (see main): the last rank leaves first and every
 * other rank sees its window disappear; then the others leave; rank 0 (the store host) goes
 * last, after every other window became unreachable.
 */
#define _POSIX_C_SOURCE 200809L

#include "smem.h"
#include "smem_bm.h"
#include "logger_calls_back.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024ull * 1024ull)
#define KIB (1024ull)
#define SLOT (64 * KIB)
#define HBM_REQ 1ull
#define DRAM_REQ (3 * MIB + 1)
#define HBM_SIZE (2 * MIB)
#define DRAM_SIZE (4 * MIB)
#define MAX_RANKS 8
#define WAIT_S 60.0
#define ROWS 16
#define ROW_W 1000ull
#define WIN_PITCH 3000ull /* pitch of the 2D rows inside the window */
#define LOC_PITCH 1200ull /* pitch of the 2D rows in local memory */

static int g_rank = -1;
static int g_failed = 0;

#define FAIL(...)                                                                   \
    do {                                                                            \
        fprintf(stderr, "rank %d: %s:%d: ", g_rank, __FILE__, __LINE__);            \
        fprintf(stderr, __VA_ARGS__);                                               \
        fprintf(stderr, " (last error: %s)\n", smem_get_last_err_msg());            \
        g_failed = 1;                                                               \
        exit(1);                                                                    \
    } while (0)

#define EXPECT(cond)                         \
    do {                                     \
        if (!(cond)) {                       \
            FAIL("EXPECT failed: %s", #cond); \
        }                                    \
    } while (0)

#define EXPECT_RC(call, want)                                                  \
    do {                                                                       \
        int32_t rc_ = (call);                                                  \
        if (rc_ != (want)) {                                                   \
            FAIL("%s returned %d, expected %d", #call, (int)rc_, (int)(want)); \
        }                                                                      \
    } while (0)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_ms(long ms)
{
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

static uint8_t pattern(int writer, int owner, uint64_t i, int salt)
{
    return (uint8_t)(writer * 131 + owner * 31 + salt * 17 + (int)(i * 7) + (int)(i >> 9));
}

static void fill(uint8_t *buf, uint64_t n, int writer, int owner, int salt)
{
    uint64_t i;
    for (i = 0; i < n; i++) {
        buf[i] = pattern(writer, owner, i, salt);
    }
}

static void verify(const uint8_t *buf, uint64_t n, int writer, int owner, int salt,
                   const char *what)
{
    uint64_t i;
    for (i = 0; i < n; i++) {
        if (buf[i] != pattern(writer, owner, i, salt)) {
            FAIL("%s: byte %llu is %u, expected %u (writer %d, owner %d)", what,
                 (unsigned long long)i, buf[i], pattern(writer, owner, i, salt), writer, owner);
        }
    }
}

static smem_bm_t g_h;
static int g_ws;
static uint8_t *g_base[MAX_RANKS];

static uint8_t *hbm(int owner, uint64_t off) { return g_base[owner] + off; }
static uint8_t *dram(int owner, uint64_t off) { return g_base[owner] + HBM_SIZE + off; }

/* A copy that is retried while the window it targets is not joined yet. */
static void copy_retry(const void *src, void *dst, uint64_t n, smem_bm_copy_type t,
                       const char *what)
{
    double deadline = now_s() + WAIT_S;
    for (;;) {
        int32_t rc = smem_bm_copy(g_h, src, dst, n, t, 0);
        if (rc == SM_OK) {
            return;
        }
        if ((rc != SM_INVALID_PARAM && rc != SM_OBJECT_NOT_EXISTS) || now_s() > deadline) {
            FAIL("%s: smem_bm_copy returned %d", what, (int)rc);
        }
        (void)smem_get_and_clear_last_err_msg();
        pause_ms(2);
    }
}

static uint64_t read_flag(int owner)
{
    uint64_t v = 0;
    copy_retry(dram(owner, 2 * MIB), &v, sizeof v, SMEMB_COPY_G2H, "read flag");
    return v;
}

static void write_flag(uint64_t phase)
{
    copy_retry(&phase, dram(g_rank, 2 * MIB), sizeof phase, SMEMB_COPY_H2G, "write flag");
}

static void wait_flag(int owner, uint64_t phase)
{
    double deadline = now_s() + WAIT_S;
    while (read_flag(owner) < phase) {
        if (now_s() > deadline) {
            FAIL("rank %d did not reach phase %llu in time", owner, (unsigned long long)phase);
        }
        pause_ms(2);
    }
}

/* Waits until every rank except `skip` (-1: none) published `phase`. */
static void wait_phase(uint64_t phase, int skip)
{
    int r;
    for (r = 0; r < g_ws; r++) {
        if (r != skip) {
            wait_flag(r, phase);
        }
    }
}

/* Waits until copies into `owner`'s window fail (it left or is gone). */
static void wait_unreachable(int owner)
{
    double deadline = now_s() + WAIT_S;
    uint8_t b = 0x77;
    for (;;) {
        int32_t rc = smem_bm_copy(g_h, &b, dram(owner, 3 * MIB), 1, SMEMB_COPY_H2G, 0);
        (void)smem_get_and_clear_last_err_msg();
        if (rc == SM_OBJECT_NOT_EXISTS || rc == SM_INVALID_PARAM) {
            return;
        }
        if (rc != SM_OK) {
            FAIL("copy into the window of leaving rank %d returned %d", owner, (int)rc);
        }
        if (now_s() > deadline) {
            FAIL("rank %d's window is still reachable after its leave", owner);
        }
        pause_ms(2);
    }
}

static void check_init(const char *url, int ws)
{
    smem_bm_config_t cfg, other;
    EXPECT_RC(smem_init(0), SM_OK);
    EXPECT_RC(smem_bm_config_init(&cfg), SM_OK);
    cfg.rankId = (uint16_t)g_rank;
    cfg.initTimeout = 60;
    cfg.createTimeout = 60;
    cfg.controlOperationTimeout = 30;
    EXPECT(smem_bm_get_rank_id() == UINT32_MAX);
    EXPECT_RC(smem_bm_init(url, (uint32_t)ws, 0, &cfg), SM_OK);
    EXPECT(smem_bm_get_rank_id() == (uint32_t)g_rank);
    /* Double init: identical arguments are accepted, different ones are SM_REPEAT_CALL. */
    EXPECT_RC(smem_bm_init(url, (uint32_t)ws, 0, &cfg), SM_OK);
    other = cfg;
    other.controlOperationTimeout = 31;
    EXPECT_RC(smem_bm_init(url, (uint32_t)ws, 0, &other), SM_REPEAT_CALL);
    EXPECT_RC(smem_bm_init(url, (uint32_t)ws + 1, 0, &cfg), SM_REPEAT_CALL);
    EXPECT(smem_bm_get_rank_id() == (uint32_t)g_rank);
}

static void check_create_join(void)
{
    void *local = NULL;
    int r;
    smem_bm_data_op_type ops = (smem_bm_data_op_type)(SMEMB_DATA_OP_SDMA | SMEMB_DATA_OP_HOST_TCP);
    g_h = smem_bm_create(0, (uint32_t)g_ws, ops, DRAM_REQ, HBM_REQ, 0);
    EXPECT(g_h != NULL);
    __atomic_store_n(&g_logger_bm, g_h, __ATOMIC_RELEASE);
    EXPECT(smem_bm_create(0, (uint32_t)g_ws, ops, DRAM_REQ, HBM_REQ, 0) == NULL);
    EXPECT(strstr(smem_get_last_err_msg(), "SM_DUPLICATED_OBJECT") != NULL);
    EXPECT(smem_bm_create(1, (uint32_t)g_ws + 1, ops, DRAM_REQ, HBM_REQ, 0) == NULL);
    (void)smem_get_and_clear_last_err_msg();
    EXPECT(smem_bm_get_local_mem_size(g_h) == HBM_SIZE + DRAM_SIZE);
    EXPECT_RC(smem_bm_join(g_h, 0, &local), SM_OK);
    EXPECT(local != NULL);
    EXPECT_RC(smem_bm_join(g_h, 0, &local), SM_REPEAT_CALL);
    (void)smem_get_and_clear_last_err_msg();
    for (r = 0; r < g_ws; r++) {
        g_base[r] = (uint8_t *)smem_bm_ptr(g_h, (uint16_t)r);
        EXPECT(g_base[r] != NULL);
        if (r > 0) {
            uint64_t stride = (uint64_t)(g_base[r] - g_base[r - 1]);
            EXPECT(stride >= HBM_SIZE + DRAM_SIZE);
            EXPECT(stride % (2 * MIB) == 0);
            EXPECT(r == 1 || stride == (uint64_t)(g_base[1] - g_base[0]));
        }
    }
    EXPECT((void *)g_base[g_rank] == local);
    EXPECT(smem_bm_ptr(g_h, (uint16_t)g_ws) == NULL);
    (void)smem_get_and_clear_last_err_msg();
}

/* Owner-only guards get the owner's pattern; verified again after every crossing attempt. */
static void guards(int write)
{
    static uint8_t buf[SLOT];
    uint8_t *where[4];
    int i;
    where[0] = hbm(g_rank, 0);
    where[1] = hbm(g_rank, HBM_SIZE - SLOT);
    where[2] = dram(g_rank, 0);
    where[3] = dram(g_rank, DRAM_SIZE - SLOT);
    for (i = 0; i < 4; i++) {
        if (write) {
            fill(buf, SLOT, g_rank, g_rank, 100 + i);
            copy_retry(buf, where[i], SLOT, SMEMB_COPY_H2G, "guard write");
        } else {
            memset(buf, 0, sizeof buf);
            copy_retry(where[i], buf, SLOT, SMEMB_COPY_G2H, "guard read");
            verify(buf, SLOT, g_rank, g_rank, 100 + i, "guard");
        }
    }
}

static void write_peers(void)
{
    static uint8_t buf[SLOT];
    int q;
    for (q = 0; q < g_ws; q++) {
        fill(buf, SLOT, g_rank, q, 1);
        copy_retry(buf, dram(q, SLOT + (uint64_t)g_rank * SLOT), SLOT, SMEMB_COPY_H2G, "H2G");
        fill(buf, SLOT, g_rank, q, 2);
        copy_retry(buf, hbm(q, SLOT + (uint64_t)g_rank * SLOT), SLOT, SMEMB_COPY_L2G, "L2G");
    }
}

/* 2D rows from this rank into `region` (a peer's window) and back, with the given copy types;
 * the bytes between the rows keep their background. */
static void check_2d_at(uint8_t *region, int q, smem_bm_copy_type to, smem_bm_copy_type from,
                        uint8_t *src)
{
    static uint8_t back[ROWS * LOC_PITCH], span[ROWS * WIN_PITCH];
    uint64_t row, i;
    /* Background first, so the bytes between rows can be checked afterwards. */
    memset(span, 0xEE, sizeof span);
    copy_retry(span, region, sizeof span, SMEMB_COPY_H2G, "2D background");
    fill(src, ROWS * LOC_PITCH, g_rank, q, 3);
    EXPECT_RC(smem_bm_copy_2d(g_h, src, LOC_PITCH, region, WIN_PITCH, ROW_W, ROWS, to, 0),
              SM_OK);
    memset(back, 0, sizeof back);
    EXPECT_RC(smem_bm_copy_2d(g_h, region, WIN_PITCH, back, LOC_PITCH, ROW_W, ROWS, from, 0),
              SM_OK);
    copy_retry(region, span, sizeof span, SMEMB_COPY_G2H, "2D span");
    for (row = 0; row < ROWS; row++) {
        for (i = 0; i < LOC_PITCH; i++) {
            uint8_t want_back = i < ROW_W ? src[row * LOC_PITCH + i] : 0;
            if (back[row * LOC_PITCH + i] != want_back) {
                FAIL("2D read-back row %llu byte %llu", (unsigned long long)row,
                     (unsigned long long)i);
            }
        }
        for (i = 0; i < WIN_PITCH; i++) {
            uint8_t want = i < ROW_W ? src[row * LOC_PITCH + i] : 0xEE;
            if (span[row * WIN_PITCH + i] != want) {
                FAIL("2D window row %llu byte %llu", (unsigned long long)row,
                     (unsigned long long)i);
            }
        }
    }
}

static void check_copy_2d(void)
{
    static uint8_t src[ROWS * LOC_PITCH];
    int q = (g_rank + 1) % g_ws;
    uint8_t *region = dram(q, 1 * MIB + (uint64_t)g_rank * SLOT);
    /* HBM: host and local ("device") memory to and from the peer's HBM part. */
    check_2d_at(hbm(q, 1 * MIB + (uint64_t)g_rank * SLOT), q, SMEMB_COPY_H2G, SMEMB_COPY_G2H,
                src);
    check_2d_at(hbm(q, 1 * MIB + (uint64_t)g_rank * SLOT), q, SMEMB_COPY_L2G, SMEMB_COPY_G2L,
                src);
    /* DRAM last: the previous rank verifies these rows in phase 2. */
    check_2d_at(region, q, SMEMB_COPY_H2G, SMEMB_COPY_G2H, src);
    /* Pitches smaller than the width and spans leaving the part are refused. */
    EXPECT_RC(smem_bm_copy_2d(g_h, src, LOC_PITCH, region, ROW_W - 1, ROW_W, ROWS,
                              SMEMB_COPY_H2G, 0), SM_INVALID_PARAM);
    EXPECT_RC(smem_bm_copy_2d(g_h, src, LOC_PITCH, dram(q, DRAM_SIZE - 2 * WIN_PITCH),
                              WIN_PITCH, ROW_W, 3, SMEMB_COPY_H2G, 0), SM_INVALID_PARAM);
    (void)smem_get_and_clear_last_err_msg();
}

static void check_errors(void)
{
    uint8_t buf[16];
    uint64_t stride = (uint64_t)(g_base[1] - g_base[0]);
    memset(buf, 0xC3, sizeof buf);
    /* NULL handle, NULL pointers, size 0, unknown type. */
    EXPECT_RC(smem_bm_copy(NULL, buf, dram(g_rank, 3 * MIB), 8, SMEMB_COPY_H2G, 0),
              SM_INVALID_PARAM);
    EXPECT_RC(smem_bm_copy(g_h, NULL, dram(g_rank, 3 * MIB), 8, SMEMB_COPY_H2G, 0),
              SM_INVALID_PARAM);
    EXPECT_RC(smem_bm_copy(g_h, buf, NULL, 8, SMEMB_COPY_H2G, 0), SM_INVALID_PARAM);
    EXPECT_RC(smem_bm_copy(g_h, buf, dram(g_rank, 3 * MIB), 0, SMEMB_COPY_H2G, 0),
              SM_INVALID_PARAM);
    EXPECT_RC(smem_bm_copy(g_h, buf, dram(g_rank, 3 * MIB), 8, SMEMB_COPY_BUTT, 0),
              SM_INVALID_PARAM);
    EXPECT_RC(smem_bm_copy(g_h, buf, dram(g_rank, 3 * MIB), 8, (smem_bm_copy_type)77, 0),
              SM_INVALID_PARAM);
    /* Out of range: beyond the last window, and a local buffer as the global side. */
    EXPECT_RC(smem_bm_copy(g_h, buf, g_base[g_ws - 1] + stride, 8, SMEMB_COPY_H2G, 0),
              SM_INVALID_PARAM);
    EXPECT_RC(smem_bm_copy(g_h, buf, buf + 8, 8, SMEMB_COPY_H2G, 0), SM_INVALID_PARAM);
    EXPECT_RC(smem_bm_copy(g_h, buf, buf + 8, 8, SMEMB_COPY_G2H, 0), SM_INVALID_PARAM);
    /* Crossing the HBM/DRAM part boundary of this window, and the end of this window into the
     * next one (or past the last one): refused, and the guards around stay intact. */
    EXPECT_RC(smem_bm_copy(g_h, buf, hbm(g_rank, HBM_SIZE - 4), 8, SMEMB_COPY_H2G, 0),
              SM_INVALID_PARAM);
    EXPECT_RC(smem_bm_copy(g_h, buf, dram(g_rank, DRAM_SIZE - 4), 8, SMEMB_COPY_H2G, 0),
              SM_INVALID_PARAM);
    EXPECT_RC(smem_bm_copy(g_h, hbm(g_rank, HBM_SIZE - 4), buf, 8, SMEMB_COPY_G2H, 0),
              SM_INVALID_PARAM);
    EXPECT_RC(smem_bm_copy(g_h, buf, dram(g_rank, DRAM_SIZE - 1), 2, SMEMB_COPY_H2G, 0),
              SM_INVALID_PARAM);
    EXPECT_RC(smem_bm_copy(g_h, buf, dram(g_rank, DRAM_SIZE - 4), UINT64_MAX, SMEMB_COPY_H2G,
                           0), SM_INVALID_PARAM);
    EXPECT_RC(smem_bm_copy(NULL, buf, buf, 8, SMEMB_COPY_G2H, 0), SM_INVALID_PARAM);
    (void)smem_get_and_clear_last_err_msg();
    /* The last byte of the window is usable (inclusive range check): read it back. */
    {
        uint8_t last = 0;
        copy_retry(dram(g_rank, DRAM_SIZE - 1), &last, 1, SMEMB_COPY_G2H, "last byte");
        EXPECT(last == pattern(g_rank, g_rank, SLOT - 1, 103));
    }
}

static void verify_own_and_peers(void)
{
    static uint8_t buf[SLOT];
    int w;
    for (w = 0; w < g_ws; w++) {
        /* What every writer w put into this window. */
        memset(buf, 0, sizeof buf);
        copy_retry(dram(g_rank, SLOT + (uint64_t)w * SLOT), buf, SLOT, SMEMB_COPY_G2H, "G2H own");
        verify(buf, SLOT, w, g_rank, 1, "H2G slot");
        memset(buf, 0, sizeof buf);
        copy_retry(hbm(g_rank, SLOT + (uint64_t)w * SLOT), buf, SLOT, SMEMB_COPY_G2L, "G2L own");
        verify(buf, SLOT, w, g_rank, 2, "L2G slot");
        /* What this rank put into window w (remote reads). */
        memset(buf, 0, sizeof buf);
        copy_retry(dram(w, SLOT + (uint64_t)g_rank * SLOT), buf, SLOT, SMEMB_COPY_G2H, "G2H peer");
        verify(buf, SLOT, g_rank, w, 1, "peer H2G slot");
        memset(buf, 0, sizeof buf);
        copy_retry(hbm(w, SLOT + (uint64_t)g_rank * SLOT), buf, SLOT, SMEMB_COPY_G2L, "G2L peer");
        verify(buf, SLOT, g_rank, w, 2, "peer L2G slot");
    }
    /* The 2D rows the previous rank wrote into this window. */
    {
        static uint8_t span[ROWS * WIN_PITCH], src[ROWS * LOC_PITCH];
        int p = (g_rank + g_ws - 1) % g_ws;
        uint64_t row, i;
        fill(src, sizeof src, p, g_rank, 3);
        copy_retry(dram(g_rank, 1 * MIB + (uint64_t)p * SLOT), span, sizeof span,
                   SMEMB_COPY_G2H, "2D own");
        for (row = 0; row < ROWS; row++) {
            for (i = 0; i < WIN_PITCH; i++) {
                uint8_t want = i < ROW_W ? src[row * LOC_PITCH + i] : 0xEE;
                if (span[row * WIN_PITCH + i] != want) {
                    FAIL("2D rows from rank %d: row %llu byte %llu", p,
                         (unsigned long long)row, (unsigned long long)i);
                }
            }
        }
    }
    guards(0);
}

int main(int argc, char **argv)
{
    char url[64];
    const char *host;
    int port, r, leaver, logger;
    if (argc != 4) {
        fprintf(stderr, "usage: %s RANK WORLD_SIZE PORT\n", argv[0]);
        return 2;
    }
    g_rank = atoi(argv[1]);
    g_ws = atoi(argv[2]);
    port = atoi(argv[3]);
    if (g_ws < 2 || g_ws > MAX_RANKS || g_rank < 0 || g_rank >= g_ws || port <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    alarm(240); /* last-resort deadline; the driver has its own */
    host = getenv("SMEM_TEST_STORE_HOST");
    if (host == NULL || host[0] == '\0' || strlen(host) > 15) {
        host = "127.0.0.1";
    }
    snprintf(url, sizeof url, "tcp://%s:%d", host, port);
    leaver = g_ws - 1;
    logger = logger_calls_back_install();

    check_init(url, g_ws);
    check_create_join();

    /* Phase 1: guards, data to every peer (retrying until each joined), 2D, error cases. */
    guards(1);
    write_peers();
    check_copy_2d();
    check_errors();
    write_flag(1);
    wait_phase(1, -1);

    /* Phase 2: every byte written by everyone is in place. */
    verify_own_and_peers();
    write_flag(2);
    wait_phase(2, -1);

    /* From here on a rank's window may disappear, so only rank 0 (the store host, which
     * leaves last) reads other ranks' flags, and the others read only rank 0's flag:
     * 3 = passed phase 2 (reads nobody else's flag any more); rank 0: 4 = the leaver may leave;
     * 5 = saw the leaver's window disappear; rank 0: 6 = everyone may leave. */
    write_flag(3);
    if (g_rank == 0) {
        wait_phase(3, -1);
        write_flag(4);
        wait_unreachable(leaver);
        for (r = 1; r < leaver; r++) {
            wait_flag(r, 5);
        }
        write_flag(6);
        for (r = 1; r < leaver; r++) {
            wait_unreachable(r);
        }
        EXPECT_RC(smem_bm_leave(g_h, 0), SM_OK);
    } else if (g_rank == leaver) {
        wait_flag(0, 4);
        EXPECT_RC(smem_bm_leave(g_h, 0), SM_OK);
        EXPECT(smem_bm_leave(g_h, 0) != SM_OK); /* not joined any more */
        (void)smem_get_and_clear_last_err_msg();
    } else {
        wait_flag(0, 4);
        wait_unreachable(leaver);
        write_flag(5);
        wait_flag(0, 6);
        EXPECT_RC(smem_bm_leave(g_h, 0), SM_OK);
    }
    smem_bm_destroy(g_h);
    smem_bm_destroy(g_h); /* already destroyed: ignored */
    {
        uint8_t b = 1;
        int32_t rc = smem_bm_copy(g_h, &b, g_base[0], 1, SMEMB_COPY_H2G, 0);
        EXPECT(rc == SM_OBJECT_NOT_EXISTS || rc == SM_INVALID_PARAM);
        EXPECT(smem_bm_get_local_mem_size(g_h) == 0);
        EXPECT(smem_bm_ptr(g_h, 0) == NULL);
    }
    smem_bm_uninit(0);
    EXPECT(smem_bm_get_rank_id() == UINT32_MAX);
    smem_uninit();
    if (g_failed) {
        return 1;
    }
    if (logger) {
        /* The whole job logged through the logger, debug records included. */
        EXPECT(logger_calls_back_records(0) > 0 && logger_calls_back_records(1) > 0);
        printf("rank %d: the logger took %lu debug and %lu info records\n", g_rank,
               logger_calls_back_records(0), logger_calls_back_records(1));
    }
    printf("rank %d ok\n", g_rank);
    return 0;
}
