#pragma once
// Per-call scratch memory. A run() leases one Workspace from the model's pool and returns it
// when done, so concurrent calls never share buffers and, once the pool has warmed up to the
// concurrency level and the largest batch, calls do not allocate compaction buffers.

#include <memory>
#include <mutex>
#include <vector>

#include "exitc/executor.hpp"
#include "exitc/tensor.hpp"

namespace exitc {

struct Workspace {
    // Per tensor slot (graph inputs, then carried tensors): the current rows of that tensor.
    std::vector<TensorView> state;
    std::vector<uint8_t> present;
    // Dense storage for compacted slots; grows to the largest batch seen, never shrinks.
    std::vector<std::vector<unsigned char>> slot_buffers;
    std::vector<int64_t> active;  // result row of each current row
    std::vector<int64_t> keep;    // current-row indices that stay after an exit
    std::vector<int64_t> leaving; // result rows that leave at an exit
    std::vector<int64_t> exiting; // current-row indices that leave at an exit
    std::vector<unsigned char> exiting_logits;  // dense logits of the leaving rows
    std::vector<uint8_t> exits;   // exit mask of the current segment
    std::vector<TensorView> feeds;
    std::vector<ExecutorOutputs> alive;    // engine outputs still referenced by `state`

    void reset(std::size_t slots) {
        state.assign(slots, TensorView{});
        present.assign(slots, 0);
        if (slot_buffers.size() < slots) slot_buffers.resize(slots);
        alive.clear();
    }
};

class WorkspacePool {
public:
    class Lease {
    public:
        Lease(WorkspacePool& pool, std::unique_ptr<Workspace> ws) : pool_(&pool), ws_(std::move(ws)) {}
        Lease(Lease&&) = default;
        Lease& operator=(Lease&&) = delete;
        Lease(const Lease&) = delete;
        ~Lease() {
            if (ws_) {
                ws_->alive.clear();  // release engine memory now, not when the workspace is reused
                pool_->give_back(std::move(ws_));
            }
        }
        Workspace& operator*() const { return *ws_; }
        Workspace* operator->() const { return ws_.get(); }

    private:
        WorkspacePool* pool_;
        std::unique_ptr<Workspace> ws_;
    };

    Lease acquire() {
        std::unique_ptr<Workspace> ws;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!free_.empty()) {
                ws = std::move(free_.back());
                free_.pop_back();
            }
        }
        if (!ws) ws = std::make_unique<Workspace>();
        return Lease(*this, std::move(ws));
    }

private:
    void give_back(std::unique_ptr<Workspace> ws) {
        std::lock_guard<std::mutex> lock(mutex_);
        free_.push_back(std::move(ws));
    }

    std::mutex mutex_;
    std::vector<std::unique_ptr<Workspace>> free_;
};

}  // namespace exitc
