/*
 * smem_trans.h - the transfer engine of the smem C API (SPEC 6.2).
 *
 * Point-to-point reads and writes between named processes' registered memory, without a pool
 * object or a world size: the shape used by disaggregated prefill/decode (KV-cache blocks).
 * Engines are named by uniqueId in the group of engines sharing one config store; they come and
 * go at any time. Same-host peers move smem_trans_malloc memory with a memory copy and
 * registered user memory with process_vm_writev/readv (when the kernel permits, else the
 * transport on loopback); other hosts go through the TCP transport (TLS when
 * smem_set_ssl_option enabled it). Conventions (return values, last error, NULL checks):
 * smem.h.
 */
#ifndef SMEM_TRANS_H
#define SMEM_TRANS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smem.h"
#include "smem_bm.h"

#ifdef __cplusplus
extern "C" {
#endif

/** An opaque engine handle (never NULL when valid). */
typedef void *smem_trans_t;

/** Role of an engine (recorded; every engine may both serve and start transfers). */
typedef enum { SMEM_TRANS_NONE = 0, SMEM_TRANS_SENDER, SMEM_TRANS_RECEIVER, SMEM_TRANS_BOTH,
               SMEM_TRANS_BUTT } smem_trans_role_t;

/** Settings of an engine; fill with smem_trans_config_init, then change what you need. */
typedef struct {
    smem_trans_role_t role;          /* default SMEM_TRANS_BOTH; NONE and BUTT are refused */
    uint32_t initTimeout;            /* s, default 120: store connection and operations, the wait
                                        for an unknown peer to appear, each socket operation */
    uint32_t deviceId;               /* default 0 (recorded; no device memory is used) */
    uint32_t flags;                  /* default 0; reserved, must be 0 */
    smem_bm_data_op_type dataOpType; /* default SMEMB_DATA_OP_HOST_TCP | SMEMB_DATA_OP_SDMA: SDMA
                                        enables the same-host paths, HOST_TCP or ROCE other hosts */
    bool startConfigServer;          /* this process hosts the store at storeUrl; default false */
} smem_trans_config_t;

/** Fills *config with the defaults above. SM_INVALID_PARAM when config is NULL. */
int32_t smem_trans_config_init(smem_trans_config_t *config);

/**
 * Process-wide initialisation; call before smem_trans_create. Again with the same settings:
 * SM_OK; with others: SM_REPEAT_CALL. SM_INVALID_PARAM for bad settings.
 */
int32_t smem_trans_init(const smem_trans_config_t *config);

/** Destroys every engine still alive and undoes smem_trans_init. flags: reserved, pass 0. */
void smem_trans_uninit(uint32_t flags);

/**
 * Creates the engine `uniqueId` (1..=127 printable bytes, typically "ip:port") in the store
 * group at storeUrl ("tcp://ip:port"), publishes its endpoints and starts serving its
 * registered memory. NULL on failure: SM_NOT_INITIALIZED before smem_trans_init,
 * SM_INVALID_PARAM for bad arguments, SM_DUPLICATED_OBJECT when a live engine of the group has
 * this id (a dead one's record is replaced), SM_TIMEOUT / SM_IO_ERROR for the store.
 */
smem_trans_t smem_trans_create(const char *storeUrl, const char *uniqueId,
                               const smem_trans_config_t *config);

/** Withdraws the engine from its group and frees its memory. flags: reserved, pass 0. */
void    smem_trans_destroy(smem_trans_t handle, uint32_t flags);

/**
 * Page-aligned shareable memory (memfd, pages allocated now) of at least `capacity` bytes,
 * already registered: same-host peers map it and move its bytes with a memory copy. NULL on
 * failure (SM_INVALID_PARAM for 0, SM_MALLOC_FAILED).
 */
void   *smem_trans_malloc(smem_trans_t handle, size_t capacity);

/** Frees smem_trans_malloc memory (SM_OBJECT_NOT_EXISTS for another address). */
int32_t smem_trans_free(smem_trans_t handle, void *address);

/**
 * Makes [address, address+capacity) of this process (any memory: malloc'ed, mmap'ed, a numpy
 * array) a legal remoteAddr for peers from the moment this returns. Overlapping a registered
 * range is SM_INVALID_PARAM (a range inside smem_trans_malloc memory is already registered).
 * flags: reserved, pass 0.
 */
int32_t smem_trans_register_mem(smem_trans_t handle, void *address, size_t capacity, uint32_t flags);

/** Registers `count` ranges, all or none (SM_INVALID_PARAM names the bad entry). */
int32_t smem_trans_batch_register_mem(smem_trans_t handle, void *addresses[], size_t capacities[],
                                      uint32_t count, uint32_t flags);

/**
 * Withdraws the registered range starting at `address`: later requests into it are refused by
 * this engine and never touch it. SM_OBJECT_NOT_EXISTS when no registered range starts there.
 */
int32_t smem_trans_deregister_mem(smem_trans_t handle, void *address);

/**
 * Synchronous transfers with the engine `remoteUniqueId`. [remoteAddr, +dataSize) must lie in
 * one range the peer registered (else SM_INVALID_PARAM naming the peer and the address); the
 * local side is any readable (write) / writable (read) memory of the caller. A write returns
 * after the bytes are in place in the peer. An unknown peer is waited for up to initTimeout,
 * then SM_OBJECT_NOT_EXISTS naming it; a peer that died: SM_IO_ERROR naming it. Batch forms:
 * one peer, `batchSize` entries, all validated first, coalesced and pipelined.
 * flags: reserved, pass 0.
 */
int32_t smem_trans_write(smem_trans_t handle, const void *localAddr, const char *remoteUniqueId,
                         void *remoteAddr, size_t dataSize, uint32_t flags);
int32_t smem_trans_batch_write(smem_trans_t handle, const void *localAddrs[],
                               const char *remoteUniqueId, void *remoteAddrs[],
                               size_t dataSizes[], uint32_t batchSize, uint32_t flags);
int32_t smem_trans_read(smem_trans_t handle, void *localAddr, const char *remoteUniqueId,
                        const void *remoteAddr, size_t dataSize, uint32_t flags);
int32_t smem_trans_batch_read(smem_trans_t handle, void *localAddrs[], const char *remoteUniqueId,
                              const void *remoteAddrs[], size_t dataSizes[], uint32_t batchSize,
                              uint32_t flags);

/**
 * Asynchronous forms: with stream == NULL the transfer is queued on the engine and the call
 * returns (an unknown peer or bad argument fails at once); smem_trans_wait completes it. Local
 * memory must stay valid until then. A non-NULL stream (a device stream) is SM_NOT_SUPPORTED
 * in this build (no device backend for the engine).
 */
int32_t smem_trans_write_submit(smem_trans_t handle, const void *localAddr,
                                const char *remoteUniqueId, void *remoteAddr, size_t dataSize,
                                void *stream, uint32_t flags);
int32_t smem_trans_read_submit(smem_trans_t handle, void *localAddr, const char *remoteUniqueId,
                               const void *remoteAddr, size_t dataSize, void *stream,
                               uint32_t flags);
int32_t smem_trans_batch_write_submit(smem_trans_t handle, const void *localAddrs[],
                                      const char *remoteUniqueId, void *remoteAddrs[],
                                      size_t dataSizes[], uint32_t batchSize, void *stream,
                                      uint32_t flags);
int32_t smem_trans_batch_read_submit(smem_trans_t handle, void *localAddrs[],
                                     const char *remoteUniqueId, const void *remoteAddrs[],
                                     size_t dataSizes[], uint32_t batchSize, void *stream,
                                     uint32_t flags);

/** Returns when every transfer this thread submitted on `handle` is done, with the first error. */
int32_t smem_trans_wait(smem_trans_t handle);

#ifdef __cplusplus
}
#endif

#endif /* SMEM_TRANS_H */
