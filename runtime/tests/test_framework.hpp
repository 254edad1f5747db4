#pragma once
// A deliberately tiny test harness (no third-party test framework to install): EXITC_TEST
// registers a function, CHECK* throw on failure, main() runs everything and prints
// "N passed, M failed".

#include <cstdlib>
#include <functional>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "exitc/error.hpp"
#include "exitc/tensor.hpp"

namespace exitc {
inline std::ostream& operator<<(std::ostream& os, const Shape& shape) { return os << shape.to_string(); }
}  // namespace exitc

namespace exitc_test {

struct Failure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

inline std::vector<std::pair<std::string, std::function<void()>>>& registry() {
    static std::vector<std::pair<std::string, std::function<void()>>> tests;
    return tests;
}

struct Registrar {
    Registrar(const char* name, std::function<void()> fn) { registry().emplace_back(name, std::move(fn)); }
};

// Positional command-line arguments, for tests that need paths.
inline std::vector<std::string>& args() {
    static std::vector<std::string> a;
    return a;
}

inline int run_all(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) args().emplace_back(argv[i]);
    int passed = 0, failed = 0;
    for (auto& [name, fn] : registry()) {
        try {
            fn();
            ++passed;
            std::cout << "[ ok ] " << name << "\n";
        } catch (const std::exception& e) {
            ++failed;
            std::cout << "[FAIL] " << name << ": " << e.what() << "\n";
        }
    }
    std::cout << passed << " passed, " << failed << " failed\n";
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

}  // namespace exitc_test

#define EXITC_TEST(name)                                                      \
    static void name();                                                       \
    static const exitc_test::Registrar registrar_##name(#name, name);         \
    static void name()

#define EXITC_FAIL(msg)                                                        \
    do {                                                                       \
        std::ostringstream exitc_os_;                                          \
        exitc_os_ << __FILE__ << ":" << __LINE__ << ": " << msg;               \
        throw exitc_test::Failure(exitc_os_.str());                            \
    } while (0)

#define CHECK(cond)                                          \
    do {                                                     \
        if (!(cond)) EXITC_FAIL("CHECK(" #cond ") failed");  \
    } while (0)

#define CHECK_EQ(a, b)                                                                        \
    do {                                                                                      \
        const auto& exitc_a_ = (a);                                                           \
        const auto& exitc_b_ = (b);                                                           \
        if (!(exitc_a_ == exitc_b_))                                                          \
            EXITC_FAIL("CHECK_EQ(" #a ", " #b ") failed: " << exitc_a_ << " vs " << exitc_b_); \
    } while (0)

// Checks that `expr` throws exitc::Error with `code` and a message containing `needle`.
#define CHECK_THROWS(expr, expected_code, needle)                                                          \
    do {                                                                                          \
        bool exitc_threw_ = false;                                                                \
        try {                                                                                     \
            (void)(expr);                                                                         \
        } catch (const exitc::Error& exitc_e_) {                                                  \
            exitc_threw_ = true;                                                                  \
            if (exitc_e_.code() != (expected_code))                                                        \
                EXITC_FAIL(#expr " threw code " << static_cast<int>(exitc_e_.code()) << ": "      \
                                               << exitc_e_.what());                               \
            if (std::string(exitc_e_.what()).find(needle) == std::string::npos)                   \
                EXITC_FAIL(#expr " message lacks '" << (needle) << "': " << exitc_e_.what());     \
        }                                                                                         \
        if (!exitc_threw_) EXITC_FAIL(#expr " did not throw");                                    \
    } while (0)

#define EXITC_TEST_MAIN \
    int main(int argc, char** argv) { return exitc_test::run_all(argc, argv); }
