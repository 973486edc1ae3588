// A host emulation of the CUDA built-ins the lossc generator uses, so that generated kernels compile with
// the host C++ compiler (g++ -std=c++20) and run on the CPU: a deterministic scheduler runs every CUDA
// thread of a block as a fiber (ucontext) on one OS thread and switches at each synchronization point.
// Warp points (each half of a warp shuffle: write the lane's slot, read the partner's; __syncwarp) hold
// a warp: when every lane of a warp waits at one, the warp's lanes run on, each to its next point,
// whatever the other warps do. __syncthreads holds the block: when no warp can go on, every thread must
// wait there, and all run on. A warp whose lanes wait at different kinds of point, or a block barrier that
// some threads never reach, is reported (a kernel that would hang on a GPU). __shared__ variables are
// function statics, which the block's threads share (blocks of a launch run one after another; thread
// local, as several OS threads may run one kernel at once). Atomics are plain: one fiber runs at a time.
#pragma once
#include <math.h>
#include <string.h>
#include <ucontext.h>

#include <cstdint>
#include <vector>

struct dim3 {
    unsigned x, y, z;
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

#define __global__
#define __device__
#define __constant__
#define __forceinline__ inline
// Per OS thread: the fibers of a block run on one thread, and tests may run one kernel on several.
#define __shared__ static thread_local
// Dynamic shared memory: the launch's buffer of the size it was given.
#define LX_DYNAMIC_SHARED(T, name) T* const name = (T*)lx_emu::current->dynamic.data()

namespace lx_emu {
using Kernel = void (*)(void* const*, const long long*, const double*, unsigned long long*);

enum Point { Start = 0, Sync = 1, Shuffle = 2, Done = 3 };

struct Fiber {
    ucontext_t context;
    std::vector<char> stack;
    Point at = Start;
};

struct Block {
    std::vector<Fiber> fibers;
    ucontext_t scheduler;
    std::vector<uint64_t> slots;
    std::vector<unsigned char> dynamic;
    Kernel kernel;
    void* const* b;
    const long long* d;
    const double* h;
    unsigned long long* e;
};
inline thread_local Block* current = nullptr;

inline void reach(Point p) {
    Fiber& f = current->fibers[threadIdx.x];
    f.at = p;
    swapcontext(&f.context, &current->scheduler);
}

inline void entry() {
    Block* b = current;
    b->kernel(b->b, b->d, b->h, b->e);
    b->fibers[threadIdx.x].at = Done;
}
}  // namespace lx_emu

inline void __syncthreads() { lx_emu::reach(lx_emu::Sync); }

template <typename T>
T __shfl_down_sync(unsigned, T v, int delta) {
    static_assert(sizeof(T) <= 8, "one slot per lane");
    lx_emu::Block* b = lx_emu::current;
    const unsigned t = threadIdx.x, lane = t & 31;
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    b->slots[t] = bits;
    lx_emu::reach(lx_emu::Shuffle);
    T r = v;
    if (lane + (unsigned)delta < 32) {
        uint64_t other = lx_emu::current->slots[threadIdx.x + delta];
        memcpy(&r, &other, sizeof(T));
    }
    lx_emu::reach(lx_emu::Shuffle);
    return r;
}

template <typename T>
T __shfl_sync(unsigned, T v, int src) {
    static_assert(sizeof(T) <= 8, "one slot per lane");
    lx_emu::Block* b = lx_emu::current;
    const unsigned t = threadIdx.x;
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    b->slots[t] = bits;
    lx_emu::reach(lx_emu::Shuffle);
    uint64_t other = lx_emu::current->slots[(threadIdx.x & ~31u) + ((unsigned)src & 31u)];
    T r;
    memcpy(&r, &other, sizeof(T));
    lx_emu::reach(lx_emu::Shuffle);
    return r;
}

inline void __syncwarp() { lx_emu::reach(lx_emu::Shuffle); }

inline unsigned long long atomicCAS(unsigned long long* addr, unsigned long long compare, unsigned long long val) {
    unsigned long long old = *addr;
    if (old == compare) *addr = val;
    return old;
}

inline float __uint_as_float(unsigned int i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

inline unsigned int __float_as_uint(float f) {
    unsigned int i;
    memcpy(&i, &f, sizeof i);
    return i;
}

inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

namespace lx_emu {
// Runs `grid` blocks of `block` threads (a multiple of 32, at most 1024). 0 on success; 3 when the
// threads of a block reached different synchronization points (a kernel that would hang on a GPU).
inline int launch(Kernel k, unsigned grid, unsigned block, unsigned shared, void* const* b, const long long* d,
                  const double* h, unsigned long long* e) {
    if (block == 0 || block % 32 != 0 || block > 1024 || grid == 0 || shared > 48 * 1024) return 1;
    Block blk;
    // Not zeroed, as on a GPU.
    blk.dynamic.assign(shared, 0xff);
    blk.fibers.resize(block);
    for (Fiber& f : blk.fibers) f.stack.resize(256 * 1024);
    blk.slots.assign(block, 0);
    blk.kernel = k;
    blk.b = b;
    blk.d = d;
    blk.h = h;
    blk.e = e;
    current = &blk;
    gridDim = dim3{grid, 1, 1};
    blockDim = dim3{block, 1, 1};
    int status = 0;
    for (unsigned g = 0; g < grid && status == 0; ++g) {
        blockIdx = dim3{g, 0, 0};
        for (Fiber& f : blk.fibers) {
            getcontext(&f.context);
            f.context.uc_stack.ss_sp = f.stack.data();
            f.context.uc_stack.ss_size = f.stack.size();
            f.context.uc_link = &blk.scheduler;
            f.at = Start;
            makecontext(&f.context, entry, 0);
        }
        auto resume = [&](unsigned t) {
            threadIdx = dim3{t, 0, 0};
            swapcontext(&blk.scheduler, &blk.fibers[t].context);
        };
        for (;;) {
            // Warps whose every live lane waits at a warp point (or has not started) run on.
            bool progressed = false;
            for (unsigned w = 0; w < block / 32; ++w) {
                bool live = false, ready = true;
                for (unsigned t = 32 * w; t < 32 * w + 32; ++t) {
                    Point p = blk.fibers[t].at;
                    if (p == Done) continue;
                    live = true;
                    if (p != Start && p != Shuffle) ready = false;
                }
                if (!live || !ready) continue;
                bool shuffle = false, other = false;
                for (unsigned t = 32 * w; t < 32 * w + 32; ++t) {
                    Point p = blk.fibers[t].at;
                    shuffle |= p == Shuffle;
                    other |= p != Shuffle;
                }
                if (shuffle && other) {  // some lanes at a shuffle, others done or elsewhere
                    status = 3;
                    break;
                }
                for (unsigned t = 32 * w; t < 32 * w + 32; ++t)
                    if (blk.fibers[t].at != Done) resume(t);
                progressed = true;
            }
            if (status != 0) break;
            if (progressed) continue;
            // Otherwise every thread is done, or every one waits at the block barrier.
            unsigned done = 0, sync = 0;
            for (const Fiber& f : blk.fibers) {
                done += f.at == Done;
                sync += f.at == Sync;
            }
            if (done == block) break;
            if (sync != block) {
                status = 3;
                break;
            }
            for (unsigned t = 0; t < block; ++t) resume(t);
        }
    }
    current = nullptr;
    return status;
}
}  // namespace lx_emu
