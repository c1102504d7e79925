/*
 * smem_bm.h - BM ("big memory") pools of the smem C API.
 *
 * A BM object is a pool made of one window per member rank; window r is
 * [base + r*stride, base + (r+1)*stride) in the global virtual address (GVA) range, with the
 * rank's HBM part first and its DRAM part after it (each rounded up to 2 MiB). Data moves with
 * smem_bm_copy / smem_bm_copy_2d. Conventions (return values, last error, NULL checks): smem.h.
 */
#ifndef SMEM_BM_H
#define SMEM_BM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smem.h"

#ifdef __cplusplus
extern "C" {
#endif

/** An opaque BM object handle (never NULL when valid). */
typedef void *smem_bm_t;

/** Data engines of a BM object (bit set). */
typedef enum {
    SMEMB_DATA_OP_SDMA = 1u << 0,     /* device copy engine (same host) */
    SMEMB_DATA_OP_ROCE = 1u << 1,     /* RDMA; falls back to HOST_TCP where no RDMA device exists */
    SMEMB_DATA_OP_HOST_TCP = 1u << 2  /* windows of other hosts over TCP */
} smem_bm_data_op_type;

/** Direction of a copy: L = local device memory, H = local host memory, G = global (GVA). */
typedef enum {
    SMEMB_COPY_L2G = 0, /* local device memory -> a window */
    SMEMB_COPY_G2L = 1, /* a window -> local device memory */
    SMEMB_COPY_G2H = 2, /* a window -> local host memory */
    SMEMB_COPY_H2G = 3, /* local host memory -> a window */
    SMEMB_COPY_BUTT,    /* first invalid value of the seed API (4..7 stay invalid) */
    SMEMB_COPY_G2G = 8  /* window to window (any ranks, any hosts) */
} smem_bm_copy_type;

/** The entries of smem_bm_copy_batch: batchSize copies of sizes dataSizes[i] bytes. */
typedef struct {
    void **sources;
    void **destinations;
    const uint64_t *dataSizes;
    uint32_t batchSize;
} smem_batch_copy_params;

/** Settings of smem_bm_init; fill with smem_bm_config_init, then change what you need. */
typedef struct {
    uint32_t initTimeout;             /* s, bounds smem_bm_init; default 120 */
    uint32_t createTimeout;           /* s, bounds smem_bm_create / join; default 120 */
    uint32_t controlOperationTimeout; /* s, bounds each store / control operation; default 120 */
    bool startConfigStore;            /* rank 0 hosts the store; default true */
    bool startConfigStoreOnly;        /* this process only hosts the store; default false */
    bool dynamicWorldSize;            /* ranks may join after init; default false */
    bool unifiedAddressSpace;         /* same GVA in every process; default true */
    bool autoRanking;                 /* the store assigns rank ids; default false */
    uint16_t rankId;                  /* explicit rank id when !autoRanking; default 65535 */
    uint32_t flags;                   /* default 0 */
} smem_bm_config_t;

/**
 * Fills *config with the defaults written beside each field above (timeouts 120 s,
 * startConfigStore and unifiedAddressSpace true, other bools false, rankId 65535, flags 0).
 * Returns SM_OK, or SM_INVALID_PARAM when config is NULL.
 */
int32_t smem_bm_config_init(smem_bm_config_t *config);

/**
 * Joins this process to the BM domain of `worldSize` ranks whose config store is at storeURL
 * ("tcp://IPv4:port" or "tcp://[IPv6]:port"); rank 0 (or, with autoRanking, the process whose
 * local address is the URL's host) starts the store in-process when startConfigStore is set.
 * Returns once all worldSize ranks registered; SM_TIMEOUT after initTimeout, with a last error
 * naming the ranks still missing.
 * deviceId: the device whose HBM this process contributes.
 * config: required (NULL is SM_INVALID_PARAM: the defaults name no rank, so fill one with
 *   smem_bm_config_init and set rankId or autoRanking). Read during the call only; every
 *   field is honoured or refused: unifiedAddressSpace = false and non-zero flags are
 *   SM_INVALID_PARAM.
 * Checked here: storeURL non-NULL UTF-8; 1 <= worldSize <= SMEM_WORLD_SIZE_MAX; timeouts >= 1;
 *   rankId < worldSize unless autoRanking or startConfigStoreOnly (SM_INVALID_PARAM).
 * A second call while initialised: SM_OK if every argument (URL, worldSize, deviceId and each
 *   config field) is identical to the first call (nothing happens, logged), SM_REPEAT_CALL
 *   otherwise (the first initialisation stays in place). After smem_bm_uninit it starts anew.
 */
int32_t smem_bm_init(const char *storeURL, uint32_t worldSize, uint16_t deviceId,
                     const smem_bm_config_t *config);

/**
 * Destroys every BM object of this process (leaving the joined ones), leaves the domain and
 * stops the store this process hosts. Safe when not initialised. flags: reserved, pass 0
 * (other values are ignored with a warning).
 */
void smem_bm_uninit(uint32_t flags);

/** This process's rank id; UINT32_MAX when not initialised (or startConfigStoreOnly). */
uint32_t smem_bm_get_rank_id(void);

/**
 * Creates BM object `id` (0..63, unique per process) with windows for ranks 0..memberSize-1
 * (1 <= memberSize <= worldSize) and allocates this rank's part: localDRAMSize bytes of
 * shareable host memory and localHBMSize bytes of device memory, each rounded up to 2 MiB; at
 * least one is non-zero, and every member must pass the same sizes (a mismatch fails at join).
 * dataOpType: a non-empty set of smem_bm_data_op_type bits. flags: reserved, must be 0 (else
 * SM_INVALID_PARAM).
 * Does not wait for the other members: the first creator picks the object's GVA range, later
 * ones adopt it. Bounded by createTimeout. Returns the handle, or NULL (last error set) on
 * failure: SM_INVALID_PARAM, SM_NOT_INITIALIZED, SM_DUPLICATED_OBJECT, SM_MALLOC_FAILED,
 * SM_RESOURCE_IN_USE (the object's range is taken in this process), SM_TIMEOUT...
 */
smem_bm_t smem_bm_create(uint32_t id, uint32_t memberSize, smem_bm_data_op_type dataOpType,
                         uint64_t localDRAMSize, uint64_t localHBMSize, uint32_t flags);

/**
 * Leaves the object if joined, frees its local memory and GVA reservation. The handle is
 * invalid afterwards. NULL or an already destroyed handle is ignored (logged, last error set).
 */
void smem_bm_destroy(smem_bm_t handle);

/**
 * Makes this rank's window visible to the other members and maps theirs; on success writes
 * *localGvaAddress = base + rank*stride. When it returns, every member that joined earlier
 * reaches the new window and this rank reaches theirs; later joiners become visible without
 * further calls. Bounded by createTimeout. flags: reserved, must be 0 (else SM_INVALID_PARAM).
 * Returns SM_OK; SM_INVALID_PARAM (NULL handle or localGvaAddress, size mismatch...),
 * SM_OBJECT_NOT_EXISTS (destroyed handle), SM_REPEAT_CALL (already joined), SM_TIMEOUT.
 */
int32_t smem_bm_join(smem_bm_t handle, uint32_t flags, void **localGvaAddress);

/**
 * Withdraws this rank's window: when it returns, no other member touches it any more (their
 * copies into it fail cleanly with SM_OBJECT_NOT_EXISTS or SM_INVALID_PARAM). flags: reserved,
 * must be 0 (else SM_INVALID_PARAM). Returns SM_OK; SM_INVALID_PARAM for NULL; SM_OBJECT_NOT_EXISTS if not joined.
 */
int32_t smem_bm_leave(smem_bm_t handle, uint32_t flags);

/** Bytes this rank contributes to the object (HBM + DRAM after rounding); 0 on error. */
uint64_t smem_bm_get_local_mem_size(smem_bm_t handle);

/**
 * The start of peer peerRankId's window: base + peerRankId*stride. NULL (last error set) when
 * handle is NULL or invalid or peerRankId >= memberSize.
 */
void *smem_bm_ptr(smem_bm_t handle, uint16_t peerRankId);

/**
 * Copies `size` bytes. L2G / H2G: [dest, dest+size) lies in one part (HBM or DRAM) of one
 * joined window and src is local device / host memory. G2L / G2H: [src, src+size) lies in one
 * joined window's part and dest is local memory. G2G: both ranges lie in joined windows (each
 * in one part; any two windows, same host or not, not overlapping). The copy is complete and
 * visible to the peers when the call returns. flags: 0, or SMEM_ASYNC_COPY_FLAG (smem.h) to
 * queue the copy (validated first) and complete it with smem_bm_wait; any other bit is
 * SM_INVALID_PARAM.
 * Returns SM_OK; SM_INVALID_PARAM (touching no byte) for a NULL handle, src or dest, size 0, an
 * unknown t or flags, a range crossing a window or part boundary, an unjoined window, or an
 * overflowing range; SM_OBJECT_NOT_EXISTS for a destroyed handle or a window that left; SM_IO_ERROR /
 * SM_TIMEOUT for a failed remote transfer.
 */
int32_t smem_bm_copy(smem_bm_t handle, const void *src, void *dest, uint64_t size,
                     smem_bm_copy_type t, uint32_t flags);

/**
 * Copies `height` rows of `width` bytes: row i from src + i*spitch to dest + i*dpitch
 * (spitch >= width, dpitch >= width, width and height >= 1). The whole strided span of the
 * global side lies in one part of one joined window. Same directions, results and checks as
 * smem_bm_copy.
 */
int32_t smem_bm_copy_2d(smem_bm_t handle, const void *src, uint64_t spitch, void *dest,
                        uint64_t dpitch, uint64_t width, uint64_t height,
                        smem_bm_copy_type t, uint32_t flags);

/**
 * batchSize (1..65536) independent copies of type t: entry i copies dataSizes[i] bytes from
 * sources[i] to destinations[i], with the rules of smem_bm_copy. Every entry is validated
 * before any byte moves: one bad entry fails the call with SM_INVALID_PARAM (or the window's
 * error) naming its index, and nothing is copied. Entries to the same peer travel together
 * (coalesced and pipelined: one transport round trip per peer group), so 1024 entries of 16 KiB
 * cost about what one 16 MiB copy costs. flags: 0 or SMEM_ASYNC_COPY_FLAG (the arrays are
 * copied; the memory they name must stay valid until smem_bm_wait). A failure after validation
 * (a peer died mid-batch) returns the first error; entries may then be partly copied.
 */
int32_t smem_bm_copy_batch(smem_bm_t handle, smem_batch_copy_params *params,
                           smem_bm_copy_type t, uint32_t flags);

/**
 * Returns when every copy this thread issued on handle with SMEM_ASYNC_COPY_FLAG is complete,
 * with the first error among them (then forgotten), or SM_OK. Copies of other threads or
 * handles are not waited for. Nothing outstanding: SM_OK (SM_OBJECT_NOT_EXISTS for a destroyed
 * handle).
 */
int32_t smem_bm_wait(smem_bm_t handle);

/**
 * Declares [addr, addr+size) of this process (memory the pool did not allocate, e.g. a
 * runtime's KV-cache tensors) as a local side of L2G/G2L/H2G/G2H copies. The engines of this
 * build reach any memory without registration, so copies work either way; the call keeps the
 * contract for engines that need it (RDMA). A range overlapping a registered one or the
 * object's own GVA range, address 0 or size 0 is SM_INVALID_PARAM; more than 65536 ranges per
 * object is SM_LIMIT_EXCEEDED. Registrations end with smem_bm_destroy.
 */
int32_t smem_bm_register_user_mem(smem_bm_t handle, uint64_t addr, uint64_t size);

/** Withdraws the range registered at addr; SM_OBJECT_NOT_EXISTS when none starts there. */
int32_t smem_bm_unregister_user_mem(smem_bm_t handle, uint64_t addr);

/**
 * The member whose window [base + r*stride, base + (r+1)*stride) holds gva; UINT32_MAX (last
 * error set) when gva lies in no window of the object or handle is invalid.
 */
uint32_t smem_bm_get_rank_id_by_gva(smem_bm_t handle, void *gva);

#ifdef __cplusplus
}
#endif

#endif /* SMEM_BM_H */
