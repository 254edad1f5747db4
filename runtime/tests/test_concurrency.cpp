// One Model, 8 threads x many run() calls of mixed batch sizes: every result equals the
// single-threaded one (bit for bit) and the statistics add up. argv[1]: test artifact directory.

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "exitc/model.hpp"
#include "test_cases.hpp"
#include "test_framework.hpp"

using namespace exitc;

namespace {

bool same_bits(const RunResult& a, const RunResult& b) {
    if (a.exit_index != b.exit_index || a.outputs.size() != b.outputs.size()) return false;
    for (std::size_t i = 0; i < a.outputs.size(); ++i)
        if (a.outputs[i].shape() != b.outputs[i].shape() ||
            std::memcmp(a.outputs[i].data(), b.outputs[i].data(), a.outputs[i].byte_size()) != 0)
            return false;
    return true;
}

void hammer(const std::string& name) {
    const std::string dir = exitc_test::args().at(0);
    ModelOptions options;
    options.executor.intra_op_threads = 1;  // deterministic kernels: results comparable bit for bit
    Model model = Model::load(dir + "/" + name + ".exitc", options);
    const auto cases = exitc_test::load_cases(dir + "/" + name + ".cases");
    std::vector<RunResult> reference;
    for (const auto& c : cases) reference.push_back(model.run(c.feeds()));
    model.reset_stats();  // before the threads start: reset is not meant to race with runs

    constexpr int kThreads = 8;
    constexpr int kCallsPerThread = 60;
    std::atomic<int> mismatches{0};
    std::atomic<uint64_t> rows{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < kCallsPerThread; ++i) {
                const std::size_t k = static_cast<std::size_t>(t * 7919 + i * 31) % cases.size();
                try {
                    if (!same_bits(model.run(cases[k].feeds()), reference[k])) ++mismatches;
                } catch (const std::exception&) {
                    ++mismatches;
                }
                rows += static_cast<uint64_t>(cases[k].batch);
            }
        });
    }
    for (auto& th : threads) th.join();
    CHECK_EQ(mismatches.load(), 0);
    const ExitStats stats = model.stats();
    CHECK_EQ(stats.calls, static_cast<uint64_t>(kThreads * kCallsPerThread));
    CHECK_EQ(stats.rows, rows.load());
}

}  // namespace

EXITC_TEST(concurrent_tiny) { hammer("tiny"); }
EXITC_TEST(concurrent_side) { hammer("side"); }

EXITC_TEST_MAIN
