// C shim over the reference wheel's (memfabric-hybrid 1.3.0) *internal* C++ config store client
// (ock::smem::TcpConfigStore, exported from libmf_smem.so but not part of any public API).
// Build (the wheel uses the pre-C++11 std::string ABI):
//   g++ -std=c++17 -O1 -fPIC -shared -D_GLIBCXX_USE_CXX11_ABI=0 ref_store_shim.cpp \
//       -L$LIB -lmf_smem -Wl,-rpath,$LIB -o libref_store_shim.so
// Only declarations are given here; every call resolves to an exported symbol of libmf_smem.so.
#include <cstdint>
#include <memory>
#include <cstring>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

namespace ock {
namespace smem {
struct UrlExtraction {
    std::string ip;
    uint16_t port = 9980;
    int32_t ExtractIpPortFromUrl(const std::string &url);
};
template <class T> class SmRef {
public:
    T *p_ = nullptr;
    ~SmRef() {}  // user-provided: returned through a hidden pointer like the real SmRef; leaks on purpose
};
class ConfigStore;
struct StoreFactory {
    static SmRef<ConfigStore> CreateStoreByUrl(const std::string &url, uint16_t model, uint32_t worldSize,
                                               int32_t rankId, int32_t connMaxRetry, bool skipRecover) noexcept;
    static void DestroyStore(const std::string &url) noexcept;
};
class TcpConfigStore {
public:
    int32_t Set(const std::string &key, const std::vector<uint8_t> &value) noexcept;
    int32_t GetReal(const std::string &key, std::vector<uint8_t> &value, int64_t timeoutMs) noexcept;
    int32_t Add(const std::string &key, int64_t increment, int64_t &value) noexcept;
    int32_t Remove(const std::string &key, bool printKeyNotExist) noexcept;
    int32_t Append(const std::string &key, const std::vector<uint8_t> &value, uint64_t &newSize) noexcept;
    int32_t Cas(const std::string &key, const std::vector<uint8_t> &expect, const std::vector<uint8_t> &value,
                std::vector<uint8_t> &exists) noexcept;
    int32_t Write(const std::string &key, const std::vector<uint8_t> &value, uint32_t offset) noexcept;
    int32_t PrefixGet(const std::string &prefix, std::unordered_map<std::string, std::string> &out) noexcept;
    int32_t QueryAlive(uint32_t rank, uint32_t &alive) noexcept;
    int32_t Watch(const std::string &key,
                  const std::function<void(int, const std::string &, const std::vector<uint8_t> &)> &notify,
                  uint32_t &wid) noexcept;
    int32_t Unwatch(uint32_t wid) noexcept;
};
}  // namespace smem
}  // namespace ock

using ock::smem::TcpConfigStore;
static std::vector<uint8_t> V(const char *p, uint64_t n) { return std::vector<uint8_t>(p, p + n); }
static std::string S(const char *p, uint64_t n) { return std::string(p, n); }
static uint64_t Out(const std::vector<uint8_t> &v, char *buf, uint64_t cap)
{
    if (buf && cap) memcpy(buf, v.data(), v.size() < cap ? v.size() : cap);
    return v.size();
}

typedef void (*rs_watch_cb)(void *ctx, int result, const char *key, uint64_t klen, const char *val, uint64_t vlen);

extern "C" {
// Parse and register the URL with the reference's SocketAddressParserMgr, as smem_bm_init /
// smem_shm_init do before connecting (without it ConnectToPeerServer fails with
// "Assert parser != nullptr"). Returns the parsed port (>0) or a negative error.
int32_t rs_register_url(const char *url)
{
    ock::smem::UrlExtraction ex;
    int32_t r = ex.ExtractIpPortFromUrl(url);
    return r != 0 ? (r < 0 ? r : -r) : ex.port;
}
// model 0 = client. Returns the store pointer or NULL.
void *rs_connect(const char *url, uint32_t worldSize, int32_t rankId, int32_t connMaxRetry)
{
    auto ref = ock::smem::StoreFactory::CreateStoreByUrl(url, 0, worldSize, rankId, connMaxRetry, true);
    return ref.p_;
}
void rs_destroy(const char *url) { ock::smem::StoreFactory::DestroyStore(url); }
int32_t rs_set(void *h, const char *k, uint64_t kl, const char *v, uint64_t vl)
{
    return static_cast<TcpConfigStore *>(h)->Set(S(k, kl), V(v, vl));
}
int32_t rs_get(void *h, const char *k, uint64_t kl, int64_t timeoutMs, char *buf, uint64_t cap, uint64_t *outLen)
{
    std::vector<uint8_t> v;
    int32_t r = static_cast<TcpConfigStore *>(h)->GetReal(S(k, kl), v, timeoutMs);
    *outLen = Out(v, buf, cap);
    return r;
}
int32_t rs_add(void *h, const char *k, uint64_t kl, int64_t inc, int64_t *out)
{
    return static_cast<TcpConfigStore *>(h)->Add(S(k, kl), inc, *out);
}
int32_t rs_remove(void *h, const char *k, uint64_t kl) { return static_cast<TcpConfigStore *>(h)->Remove(S(k, kl), true); }
int32_t rs_append(void *h, const char *k, uint64_t kl, const char *v, uint64_t vl, uint64_t *newSize)
{
    return static_cast<TcpConfigStore *>(h)->Append(S(k, kl), V(v, vl), *newSize);
}
int32_t rs_cas(void *h, const char *k, uint64_t kl, const char *e, uint64_t el, const char *v, uint64_t vl, char *buf,
               uint64_t cap, uint64_t *outLen)
{
    std::vector<uint8_t> ex;
    int32_t r = static_cast<TcpConfigStore *>(h)->Cas(S(k, kl), V(e, el), V(v, vl), ex);
    *outLen = Out(ex, buf, cap);
    return r;
}
int32_t rs_write(void *h, const char *k, uint64_t kl, const char *v, uint64_t vl, uint32_t off)
{
    return static_cast<TcpConfigStore *>(h)->Write(S(k, kl), V(v, vl), off);
}
// Output: repeated {u64 klen, key, u64 vlen, value}; returns count via *n.
int32_t rs_prefix(void *h, const char *p, uint64_t pl, char *buf, uint64_t cap, uint64_t *outLen, uint64_t *n)
{
    std::unordered_map<std::string, std::string> m;
    int32_t r = static_cast<TcpConfigStore *>(h)->PrefixGet(S(p, pl), m);
    std::vector<uint8_t> o;
    for (auto &kv : m) {
        uint64_t l = kv.first.size();
        o.insert(o.end(), (uint8_t *)&l, (uint8_t *)&l + 8);
        o.insert(o.end(), kv.first.begin(), kv.first.end());
        l = kv.second.size();
        o.insert(o.end(), (uint8_t *)&l, (uint8_t *)&l + 8);
        o.insert(o.end(), kv.second.begin(), kv.second.end());
    }
    *n = m.size();
    *outLen = Out(o, buf, cap);
    return r;
}
int32_t rs_query_alive(void *h, uint32_t rank, uint32_t *alive) { return static_cast<TcpConfigStore *>(h)->QueryAlive(rank, *alive); }
int32_t rs_watch(void *h, const char *k, uint64_t kl, rs_watch_cb cb, void *ctx, uint32_t *wid)
{
    return static_cast<TcpConfigStore *>(h)->Watch(
        S(k, kl),
        [cb, ctx](int res, const std::string &key, const std::vector<uint8_t> &v) {
            cb(ctx, res, key.data(), key.size(), (const char *)v.data(), v.size());
        },
        *wid);
}
int32_t rs_unwatch(void *h, uint32_t wid) { return static_cast<TcpConfigStore *>(h)->Unwatch(wid); }
}
